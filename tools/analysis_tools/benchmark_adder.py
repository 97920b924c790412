"""Speed and memory of adder2d against F.conv2d and the paper's unfold form.

    python tools/analysis_tools/benchmark_adder.py [--device cpu|cuda]
        [--dtype float32|float16|bfloat16] [--suite resnet20|resnet50|all]
        [--repeat N] [--warmup N] [--model-step] [--no-unfold]
        [--unfold-max-mib M] [--cpu-isa generic|avx2|avx512] [--int8]
        [--onednn-max-isa ISA] [--out FILE.json] [--markdown FILE.md]

For every distinct adder layer of ResNet-20 (CIFAR 32x32, batch 64) and
ResNet-50 (ImageNet 224x224, batch 32): median wall time of the forward and
of forward+backward (grad of input and weight) of

- ``adder``: ``adder_mm.ops.adder2d`` (compiled kernels),
- ``conv``: ``F.conv2d`` on the same shapes (oneDNN / cuDNN),
- ``unfold``: the paper's formulation, re-implemented here from the formula:
  unfold X to [N, K, L], build the [Cout, K, N*L] broadcast difference and
  abs-sum it; backward through the same explicit formulas. It needs several
  [Cout, K, N*L] temporaries, so it runs with fewer repeats and is skipped
  where one such temporary exceeds --unfold-max-mib,

ratios from the same run (adder/conv: the two alternate call by call and the
ratio is the median over rounds of the per-round ratio, so a shared machine's
drifts cancel; unfold/adder: ratio of medians), and the peak memory of one
forward+backward:

- CPU: growth of the process's resident set (VmHWM after the step minus
  VmRSS before it, the high-water mark reset through /proc/self/clear_refs).
  It counts every byte the step touches (tensors, oneDNN scratch, our
  kernels' scratch), not just tensors. The script re-executes itself with
  MALLOC_MMAP_THRESHOLD_ fixed so glibc returns freed large blocks to the
  OS instead of recycling them invisibly.
- CUDA: torch.cuda.max_memory_allocated() minus the allocation before.
Inputs and weights exist before the step and are not counted.

``--int8`` (CPU) times, per layer, the integer adder of quantized AdderNets
instead: ``adder2d_int8`` on a pre-quantized channels_last uint8 input with
the dequantization fused (float32 out), against the float32 ``adder2d``
forward, PyTorch's INT8 convolution (``torch.ao.nn.quantized.Conv2d``, x86
engine, pre-quantized channels_last input, uint8 out) and float32
``F.conv2d``, all four alternating call by call; ratios are medians of
per-round ratios. The header names the CPU, its ISA flags that matter here
(avx2, avx512bw, avx512_vnni, amx) and the oneDNN kernels torch's INT8 conv
ran (from oneDNN's verbose log; per layer in the JSON). It measures no memory; instead the
script re-executes itself with MALLOC_MMAP_MAX_=0 and a large
MALLOC_TRIM_THRESHOLD_, so that glibc recycles freed outputs as a caching
allocator would: otherwise every output above 32 MiB is a fresh mmap whose
page faults (about 0.2-0.4 ms per MiB on the VM this was written on) would
dominate the layers with large float32 outputs, four times the bytes of
torch's uint8 ones. Set MALLOC_MMAP_MAX_ yourself to time with glibc's
defaults (any value stops the re-execution).

``--model-step`` times a whole training step (forward, cross entropy,
backward, SGD step) of AdderResNet-20 against its CNN twin (with MMPretrain;
without it, the same network built from torch alone). CUDA: TF32 off, cuDNN
autotuned (cudnn.benchmark), each sample a run of back-to-back calls of at
least 2 ms timed with CUDA events. Needs torch only otherwise.
"""
import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from adder_mm.ops import (adder2d, adder2d_int8, ext_info,  # noqa: E402
                          set_cpu_isa)

_MMAP_ENV = 'MALLOC_MMAP_THRESHOLD_'
_INT8_MMAP_ENV = 'MALLOC_MMAP_MAX_'


# ----------------------------------------------------------------- shapes
def resnet20_layers(batch=64):
    """Distinct adder layers of the paper's CIFAR ResNet-20 (no stem/fc).

    Returns a list of dicts: name (first module with that shape, e.g.
    ``layer2.0.conv1``; ``down`` = the 1x1 shortcut), N, C, H, W, O, k,
    stride, pad.
    """
    layers, hw, cin = [], 32, 16
    for stage, width in enumerate((16, 32, 64)):
        stride = 1 if stage == 0 else 2
        for block in range(3):
            s = stride if block == 0 else 1
            tag = f'layer{stage + 1}.{block}'
            layers.append(_layer(f'{tag}.conv1', batch, cin, hw, width, 3, s, 1))
            out_hw = (hw + 2 - 3) // s + 1
            layers.append(_layer(f'{tag}.conv2', batch, width, out_hw, width, 3, 1, 1))
            if s != 1 or cin != width:
                layers.append(_layer(f'{tag}.down', batch, cin, hw, width, 1, s, 0))
            cin, hw = width, out_hw
    return _distinct(layers)


def resnet50_layers(batch=32):
    """Distinct adder layers of torchvision's ResNet-50 (stride on the 3x3)."""
    layers, hw, cin = [], 56, 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6),
                                             (512, 3))):
        for block in range(blocks):
            s = 2 if (block == 0 and stage > 0) else 1
            out_hw = (hw + 2 - 3) // s + 1
            tag = f'layer{stage + 1}.{block}'
            layers.append(_layer(f'{tag}.conv1', batch, cin, hw, width, 1, 1, 0))
            layers.append(_layer(f'{tag}.conv2', batch, width, hw, width, 3, s, 1))
            layers.append(_layer(f'{tag}.conv3', batch, width, out_hw, width * 4, 1, 1, 0))
            if block == 0:
                layers.append(_layer(f'{tag}.down', batch, cin, hw, width * 4, 1, s, 0))
            cin, hw = width * 4, out_hw
    return _distinct(layers)


def _layer(name, n, c, hw, o, k, s, p):
    return dict(name=name, N=n, C=c, H=hw, W=hw, O=o, k=k, stride=s, pad=p)


def _distinct(layers):
    seen, out = set(), []
    for lay in layers:
        key = tuple(lay[k] for k in ('N', 'C', 'H', 'W', 'O', 'k', 'stride', 'pad'))
        if key not in seen:
            seen.add(key)
            out.append(lay)
    return out


# ------------------------------------------------------ unfold formulation
class UnfoldAdder(torch.autograd.Function):
    """The paper's formulation: broadcast difference over [Cout, K, N*L].

    Forward  Y = -sum_k |X_col[k, p] - W[o, k]|;
    backward gW[o, k] = sum_p (X_col - W) * G,
             gX_col[k, p] = sum_o clamp(W - X_col, -1, 1) * G, then fold.
    groups=1, dilation 1 (all benchmark shapes).
    """

    @staticmethod
    def forward(ctx, x, w, stride, padding):
        n, _, h, wd = x.shape
        o, _, kh, kw = w.shape
        ho = (h + 2 * padding - kh) // stride + 1
        wo = (wd + 2 * padding - kw) // stride + 1
        xcol = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # N,K,L
        xcol = xcol.permute(1, 0, 2).reshape(xcol.shape[1], -1)  # K, N*L
        wcol = w.reshape(o, -1)
        out = -(xcol.unsqueeze(0) - wcol.unsqueeze(2)).abs().sum(1)  # O, N*L
        ctx.save_for_backward(xcol, wcol)
        ctx.conf = (x.shape, w.shape, stride, padding, ho, wo)
        return out.reshape(o, n, ho, wo).permute(1, 0, 2, 3).contiguous()

    @staticmethod
    def backward(ctx, g):
        xcol, wcol = ctx.saved_tensors
        xshape, wshape, stride, padding, ho, wo = ctx.conf
        n = xshape[0]
        gcol = g.permute(1, 0, 2, 3).reshape(wshape[0], -1)  # O, N*L
        diff = xcol.unsqueeze(0) - wcol.unsqueeze(2)  # O, K, N*L
        gw = (diff * gcol.unsqueeze(1)).sum(2).reshape(wshape)
        gx = ((-diff).clamp(-1, 1) * gcol.unsqueeze(1)).sum(0)  # K, N*L
        gx = gx.reshape(gx.shape[0], n, -1).permute(1, 0, 2)
        gx = F.fold(gx, xshape[2:], wshape[2:], padding=padding, stride=stride)
        return gx, gw, None, None


def unfold_temp_bytes(lay, elem):
    ho = (lay['H'] + 2 * lay['pad'] - lay['k']) // lay['stride'] + 1
    wo = (lay['W'] + 2 * lay['pad'] - lay['k']) // lay['stride'] + 1
    return lay['O'] * lay['C'] * lay['k']**2 * lay['N'] * ho * wo * elem


# ----------------------------------------------------------------- timing
def _sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def median_time(fn, device, repeat, warmup):
    """Median wall seconds of fn() over `repeat` calls after `warmup`."""
    return interleaved_times([fn], device, repeat, warmup)[0][0]


def interleaved_times(fns, device, repeat, warmup):
    """Time several functions in alternation (round r calls each once).

    A shared machine's speed drifts within seconds; alternating makes every
    drift hit all functions alike, so their ratio stays meaningful. On CUDA a
    sample is a run of back-to-back calls between two CUDA events, long
    enough (>= 2 ms) that launch latency and the host sync do not hide the
    kernels' own time.

    Returns:
        (medians, ratios): median seconds per call of each function, and for
        each function i > 0 the median over rounds of time[0] / time[i].
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    _sync(device)
    inner = [1] * len(fns)
    if device == 'cuda':
        for i, fn in enumerate(fns):
            inner[i] = max(1, min(200, round(2e-3 / _cuda_call_time(fn))))
    times = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            if device == 'cuda':
                times[i].append(_cuda_call_time(fn, inner[i]))
                continue
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    medians = [statistics.median(t) for t in times]
    ratios = [
        statistics.median(a / b for a, b in zip(times[0], t))
        for t in times[1:]
    ]
    return medians, ratios


def _cuda_call_time(fn, calls=1):
    """Seconds per call of `calls` back-to-back fn() on the current stream."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return 1e-3 * start.elapsed_time(end) / calls


def _status_bytes(key):
    with open('/proc/self/status') as f:
        m = re.search(key + r':\s+(\d+) kB', f.read())
    return int(m.group(1)) * 1024


def peak_bytes(fn, device):
    """Peak extra memory of one fn() call (see the module docstring)."""
    if device == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        base = _status_bytes('VmRSS')
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        return None
    fn()
    return _status_bytes('VmHWM') - base


def bench_layer(lay, args, device, dtype):
    n, c, h, w, o, k = (lay[x] for x in ('N', 'C', 'H', 'W', 'O', 'k'))
    s, p = lay['stride'], lay['pad']
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen).relu().to(device, dtype)
    wt = torch.randn(o, c, k, k, generator=gen).to(device, dtype)
    ops = {
        'adder': lambda a, b: adder2d(a, b, None, s, p),
        'conv': lambda a, b: F.conv2d(a, b, None, s, p),
        'unfold': lambda a, b: UnfoldAdder.apply(a, b, s, p),
    }
    names = ['adder', 'conv']
    elem = torch.finfo(dtype).bits // 8
    unfold_mib = unfold_temp_bytes(lay, elem) / 2**20
    if args.unfold and unfold_mib <= args.unfold_max_mib:
        names.append('unfold')
    res = dict(lay)
    res['unfold_temp_mib'] = round(unfold_mib, 1)
    with torch.no_grad():
        gout = torch.randn(ops['conv'](x, wt).shape, generator=gen).to(
            device, dtype)
    xg = x.detach().requires_grad_()
    wg = wt.detach().requires_grad_()

    def fwd(op):
        def run():
            with torch.no_grad():
                op(x, wt)
        return run

    def step(op):
        def run():
            op(xg, wg).backward(gout)
            xg.grad = None
            wg.grad = None
        return run

    # adder and conv alternate call by call (their ratio is the target);
    # the unfold form is 2-3 orders slower: a couple of calls suffice.
    for what, make in (('fwd', fwd), ('fwdbwd', step)):
        (ta, tc), (ratio, ) = interleaved_times(
            [make(ops['adder']), make(ops['conv'])], device, args.repeat,
            args.warmup)
        res[f'adder_{what}_ms'], res[f'conv_{what}_ms'] = 1e3 * ta, 1e3 * tc
        res[f'adder_over_conv_{what}'] = ratio
        if 'unfold' in names:
            try:
                res[f'unfold_{what}_ms'] = 1e3 * median_time(
                    make(ops['unfold']), device, max(1, min(args.repeat, 2)),
                    min(args.warmup, 1))
            except torch.OutOfMemoryError:
                # Its temporaries are several times unfold_temp_mib; the
                # table shows '-' rather than losing the whole run.
                names.remove('unfold')
                res['unfold_skipped'] = 'out of memory'
                torch.cuda.empty_cache()
    for name in names:
        run = step(ops[name])
        run()  # warm allocator and oneDNN caches before measuring memory
        peak = peak_bytes(run, device)
        res[f'{name}_peak_mib'] = None if peak is None else peak / 2**20
    if device == 'cuda':
        torch.cuda.empty_cache()  # the unfold form's blocks, for the next
    a, cv = res['adder_peak_mib'], res['conv_peak_mib']
    res['adder_over_conv_peak'] = (a / cv) if a and cv else None
    for what in ('fwd', 'fwdbwd', 'peak'):
        unit = 'mib' if what == 'peak' else 'ms'
        a, u = res.get(f'adder_{what}_{unit}'), res.get(f'unfold_{what}_{unit}')
        res[f'unfold_over_adder_{what}'] = (u / a) if a and u else None
    return res


# ------------------------------------------------------------- INT8 mode
_INT8_FLAGS = ('avx2', 'avx512bw', 'avx512_vnni', 'avx_vnni', 'amx_tile',
               'amx_int8')


def cpu_isa_flags():
    """The flags of /proc/cpuinfo that decide the INT8 kernels (present
    ones, in a fixed order); [] where the file is missing."""
    try:
        with open('/proc/cpuinfo') as f:
            m = re.search(r'^flags\s*:\s*(.*)$', f.read(), re.M)
    except OSError:
        return []
    have = set(m.group(1).split()) if m else set()
    return [f for f in _INT8_FLAGS if f in have]


def onednn_impl(fn):
    """The oneDNN implementation fn() runs (e.g.
    ``brg_conv_fwd:avx512_core_vnni``), read from oneDNN's verbose log
    (stdout at the file-descriptor level); None where no oneDNN primitive
    ran (FBGEMM) or the log could not be read."""
    import tempfile
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with tempfile.TemporaryFile(mode='w+') as f:
            os.dup2(f.fileno(), 1)
            try:
                with torch.backends.mkldnn.verbose(
                        torch.backends.mkldnn.VERBOSE_ON):
                    fn()
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
            f.seek(0)
            log = f.read()
    except (OSError, RuntimeError):
        return None
    finally:
        os.close(saved)
    m = re.search(r'primitive,exec,cpu,convolution,([^,]+),', log)
    return m.group(1) if m else None


def _rounds(fns, repeat, warmup):
    """CPU seconds of each call, the functions alternating call by call
    (see interleaved_times); per function a list of `repeat` samples."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return times


def _common_grid(x, w):
    """One uint8 grid covering x and w: (scale, zero_point)."""
    lo = min(float(x.min()), float(w.min()), 0.0)
    hi = max(float(x.max()), float(w.max()), 0.0)
    scale = max(hi - lo, 1e-8) / 255
    return scale, int(round(-lo / scale))


def bench_int8_layer(lay, args):
    """One layer in INT8 mode: times of the four ops and their ratios.

    The integer adder's input and weight share one grid (an adder needs
    that: |qx - qw| is a distance only on one scale); its fused epilogue
    dequantizes to float32 (out_scale = grid scale, out_bias = 0). Torch's
    INT8 conv gets the same input quantized per tensor and its weight
    quantized symmetric per tensor (qint8), as post-training quantization
    makes them. Checks once that the INT8 adder equals the float adder on
    the dequantized tensors.
    """
    n, c, h, w, o, k = (lay[x] for x in ('N', 'C', 'H', 'W', 'O', 'k'))
    s, p = lay['stride'], lay['pad']
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen).relu()
    wt = torch.randn(o, c, k, k, generator=gen)
    cl = torch.channels_last
    scale, zp = _common_grid(x, wt)
    qx = torch.quantize_per_tensor(x, scale, zp, torch.quint8)
    qx = qx.contiguous(memory_format=cl)
    qw = torch.quantize_per_tensor(wt, scale, zp, torch.quint8).int_repr()
    qx8 = qx.int_repr()  # uint8, channels_last
    out_scale = torch.full((o, ), scale)
    out_bias = torch.zeros(o)
    qconv = torch.ao.nn.quantized.Conv2d(c, o, k, s, p, bias=False)
    w_scale = float(wt.abs().max()) / 127
    qconv.set_weight_bias(
        torch.quantize_per_tensor(wt, w_scale, 0, torch.qint8), None)
    with torch.no_grad():
        y = F.conv2d(x, wt, None, s, p)
    lo, hi = float(y.min()), float(y.max())
    qconv.scale = max(hi - lo, 1e-8) / 255
    qconv.zero_point = int(round(-lo / qconv.scale))

    def int8_adder():
        return adder2d_int8(qx8, qw, s, p, 1, 1, zp, out_scale, out_bias)

    with torch.no_grad():
        ref = adder2d(qx.dequantize(), (qw.float() - zp) * scale, None, s, p)
    # float32 sums of K terms against exact integer sums
    torch.testing.assert_close(int8_adder(), ref, rtol=1e-4, atol=1e-3)

    fns = [int8_adder, lambda: adder2d(x, wt, None, s, p),
           lambda: qconv(qx), lambda: F.conv2d(x, wt, None, s, p)]
    with torch.no_grad():
        ti, tf, tq, tc = _rounds(fns, args.repeat, args.warmup)
    res = dict(lay)
    for name, t in (('int8_adder', ti), ('fp32_adder', tf),
                    ('int8_conv', tq), ('fp32_conv', tc)):
        res[f'{name}_ms'] = 1e3 * statistics.median(t)
    res['fp32_adder_over_int8_adder'] = statistics.median(
        b / a for a, b in zip(ti, tf))
    res['int8_adder_over_int8_conv'] = statistics.median(
        a / b for a, b in zip(ti, tq))
    res['int8_conv_over_fp32_conv'] = statistics.median(
        a / b for a, b in zip(tq, tc))
    return res


_INT8_RATIOS = ('fp32_adder_over_int8_adder', 'int8_adder_over_int8_conv',
                'int8_conv_over_fp32_conv')


def int8_markdown_table(results):
    head = ('| suite | layer | N,C,HxW -> O, k/s | int8 adder ms '
            '| fp32 adder ms | int8 conv ms | fp32 conv ms '
            '| fp32 adder / int8 adder | int8 adder / int8 conv |')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for r in results:
        shape = (f"{r['N']},{r['C']},{r['H']}x{r['W']} -> {r['O']}, "
                 f"{r['k']}/{r['stride']}")
        lines.append(
            f"| {r['suite']} | {r['name']} | {shape} "
            f"| {_ms(r['int8_adder_ms'])} | {_ms(r['fp32_adder_ms'])} "
            f"| {_ms(r['int8_conv_ms'])} | {_ms(r['fp32_conv_ms'])} "
            f"| {_fmt(r['fp32_adder_over_int8_adder'])} "
            f"| {_fmt(r['int8_adder_over_int8_conv'])} |")
    return '\n'.join(lines)


def int8_summary(results):
    """Median, min and max over layers of each ratio: all layers, and per
    suite (key suffix _resnet20 / _resnet50)."""
    out = {}
    suites = sorted({r['suite'] for r in results})
    for key in _INT8_RATIOS:
        for suite in [None] + suites:
            vals = [r[key] for r in results
                    if suite is None or r['suite'] == suite]
            if vals:
                name = key if suite is None else f'{key}_{suite}'
                out[name] = dict(median=statistics.median(vals),
                                 min=min(vals), max=max(vals),
                                 count=len(vals))
    return out


def main_int8(args, suites, wanted):
    import warnings
    with warnings.catch_warnings():
        # torch 2.14 deprecates quantized tensors; they are the baseline here
        warnings.filterwarnings('ignore', message='torch.quantize_per_tensor')
        return _main_int8(args, suites, wanted)


def _main_int8(args, suites, wanted):
    torch.backends.quantized.engine = 'x86'
    env = environment('cpu')
    env['cpu_flags'] = cpu_isa_flags()
    results = []
    for suite in suites:
        layers = (resnet20_layers() if suite == 'resnet20' else
                  resnet50_layers())
        for lay in layers:
            if wanted and lay['name'] not in wanted:
                continue
            if not results:
                print(_int8_header(env, args), flush=True)
            r = bench_int8_layer(lay, args)
            r['suite'] = suite
            r['int8_conv_impl'] = qconv_impl(lay)
            results.append(r)
            print(f"{suite:8s} {r['name']:15s} N{r['N']} C{r['C']} "
                  f"{r['H']}x{r['W']} O{r['O']} k{r['k']} s{r['stride']}: "
                  f"int8 adder {_ms(r['int8_adder_ms'])} ms, fp32 adder "
                  f"{_ms(r['fp32_adder_ms'])} "
                  f"(x{_fmt(r['fp32_adder_over_int8_adder'])} slower), int8 "
                  f"conv {_ms(r['int8_conv_ms'])} (int8 adder/int8 conv "
                  f"x{_fmt(r['int8_adder_over_int8_conv'])})", flush=True)
    env['int8_conv_impl'] = ', '.join(
        sorted({r['int8_conv_impl'] for r in results}))
    summ = int8_summary(results)
    table = int8_markdown_table(results)
    print('\n' + table + '\n')
    for key, v in summ.items():
        print(f"{key}: median {v['median']:.2f} (min {v['min']:.2f}, "
              f"max {v['max']:.2f}, n={v['count']})")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(env=env, args=vars(args), layers=results,
                           summary=summ), f, indent=1)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(_int8_header(env, args) + '\n\n' + table + '\n')
    return results


def qconv_impl(lay):
    """oneDNN kernel of torch's INT8 conv on a one-image copy of the layer
    (the kernel choice depends on the shape, not the batch)."""
    c, o, k, s, p = (lay[x] for x in ('C', 'O', 'k', 'stride', 'pad'))
    x = torch.rand(1, c, max(lay['H'], k), max(lay['W'], k))
    qx = torch.quantize_per_tensor(x, 1 / 255, 0, torch.quint8).contiguous(
        memory_format=torch.channels_last)
    m = torch.ao.nn.quantized.Conv2d(c, o, k, s, p, bias=False)
    m.set_weight_bias(torch.quantize_per_tensor(
        torch.randn(o, c, k, k), 0.05, 0, torch.qint8), None)
    m(qx)  # oneDNN prints a primitive's first creation and every run
    return onednn_impl(lambda: m(qx)) or 'not oneDNN (FBGEMM?)'


def _int8_header(env, args):
    malloc = os.environ.get(_INT8_MMAP_ENV)
    malloc = ('outputs recycled by malloc' if malloc == '0' else
              'glibc malloc defaults' if malloc is None else
              f'{_INT8_MMAP_ENV}={malloc}')
    impl = env.get('int8_conv_impl')
    return (f"# INT8 mode: {env['cpu']} ({' '.join(env['cpu_flags']) or '-'})"
            f", torch {env['torch']}, {env['threads']} threads, {malloc}; "
            f"adder kernels {env['ext']['cpu_isa']}"
            + (f"; torch int8 conv (x86 engine) {impl}" if impl else ''))


# ------------------------------------------------------------ model step
def bench_model_step(args, device, dtype):
    import torch.nn as nn
    try:
        from mmpretrain.models.backbones import ResNet_CIFAR  # noqa: F401

        from adder_mm.models import AdderResNet_CIFAR

        def build(adder):
            # Default init (standard-normal adder weights, as the paper's
            # code); init_weights() would only add noise to a timing.
            backbone = AdderResNet_CIFAR(
                depth=20, conv_cfg=dict(type='Adder') if adder else None)
            return nn.Sequential(backbone, _Head(64, 10)).to(device, dtype)

        model_name = 'AdderResNet_CIFAR(depth=20)'
    except ImportError as e:
        # The GPU check's machine has torch alone: same network, built here.
        print(f'--model-step: mmpretrain/adder_mm.models not importable ({e}); '
              'timing the torch-only ResNet-20 of this script instead')

        def build(adder):
            return nn.Sequential(resnet20_torch(adder),
                                 _Head(64, 10)).to(device, dtype)

        model_name = 'resnet20_torch (torch only)'

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=gen).to(device, dtype)
    y = torch.randint(0, 10, (64, ), generator=gen).to(device)
    steps = {}
    for name in ('adder', 'conv'):
        model = build(name == 'adder')
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x).float(), y).backward()
            opt.step()

        steps[name] = step
    (ta, tc), (ratio, ) = interleaved_times([steps['adder'], steps['conv']],
                                            device, args.repeat, args.warmup)
    out = dict(model=model_name, adder_step_ms=1e3 * ta, conv_step_ms=1e3 * tc,
               adder_over_conv_step=ratio)
    for name, step in steps.items():
        step()
        peak = peak_bytes(step, device)
        out[f'{name}_step_peak_mib'] = None if peak is None else peak / 2**20
    if out['adder_step_peak_mib'] and out['conv_step_peak_mib']:
        out['adder_over_conv_step_peak'] = (out['adder_step_peak_mib'] /
                                            out['conv_step_peak_mib'])
    return out


class _AdderConv(torch.nn.Module):
    """Adder layer on adder_mm.ops alone (adder_mm.models needs MMEngine)."""

    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(cout, cin, k, k))
        self.stride, self.padding = stride, k // 2

    def forward(self, x):
        return adder2d(x, self.weight, None, self.stride, self.padding)


class _BasicBlock(torch.nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv + BN on a change of
    shape), ReLU: mmpretrain's ResNet_CIFAR block."""

    def __init__(self, cin, cout, stride, conv):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(conv(cin, cout, 3, stride),
                                  nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                  conv(cout, cout, 3, 1), nn.BatchNorm2d(cout))
        self.short = (nn.Sequential(conv(cin, cout, 1, stride),
                                    nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def resnet20_torch(adder):
    """The paper's CIFAR ResNet-20 in plain torch: an ordinary 3x3 stem conv
    to 16 channels, 3 stages x 3 blocks (16, 32, 64), adder or conv layers.
    Same layers and parameters as AdderResNet_CIFAR(depth=20)."""
    nn = torch.nn

    def conv(cin, cout, k, stride):
        if adder:
            return _AdderConv(cin, cout, k, stride)
        return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)

    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
              nn.ReLU(inplace=True)]
    cin = 16
    for i, cout in enumerate((16, 32, 64)):
        for j in range(3):
            layers.append(_BasicBlock(cin, cout, 2 if i and not j else 1,
                                      conv))
            cin = cout
    return nn.Sequential(*layers)


class _Head(torch.nn.Module):
    """Global average pool + linear classifier on the last stage."""

    def __init__(self, channels, classes):
        super().__init__()
        self.fc = torch.nn.Linear(channels, classes)

    def forward(self, feats):
        feat = feats[-1] if isinstance(feats, (tuple, list)) else feats
        return self.fc(feat.mean(dim=(2, 3)))


# ---------------------------------------------------------------- output
def _fmt(v, nd=2):
    if v is None:
        return '-'
    return f'{v:.{nd}f}'


def _ms(v):
    """Milliseconds: GPU layers run in tens of microseconds."""
    return _fmt(v, 3 if v is not None and v < 10 else 1)


def markdown_table(results):
    head = ('| suite | layer | N,C,HxW -> O, k/s | conv fwd ms | adder fwd ms '
            '| adder/conv fwd | conv f+b ms | adder f+b ms | adder/conv f+b '
            '| adder/conv peak mem | unfold/adder fwd | unfold/adder f+b |')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for r in results:
        shape = (f"{r['N']},{r['C']},{r['H']}x{r['W']} -> {r['O']}, "
                 f"{r['k']}/{r['stride']}")
        lines.append(
            f"| {r['suite']} | {r['name']} | {shape} | {_ms(r['conv_fwd_ms'])} "
            f"| {_ms(r['adder_fwd_ms'])} | {_fmt(r['adder_over_conv_fwd'])} "
            f"| {_ms(r['conv_fwdbwd_ms'])} | {_ms(r['adder_fwdbwd_ms'])} "
            f"| {_fmt(r['adder_over_conv_fwdbwd'])} "
            f"| {_fmt(r['adder_over_conv_peak'])} "
            f"| {_fmt(r['unfold_over_adder_fwd'], 0)} "
            f"| {_fmt(r['unfold_over_adder_fwdbwd'], 0)} |")
    return '\n'.join(lines)


def summary(results):
    out = {}
    for key in ('adder_over_conv_fwd', 'adder_over_conv_fwdbwd',
                'adder_over_conv_peak', 'unfold_over_adder_fwd',
                'unfold_over_adder_fwdbwd'):
        vals = [r[key] for r in results if r.get(key) is not None]
        if vals:
            out[key] = dict(median=statistics.median(vals), min=min(vals),
                            max=max(vals), count=len(vals))
    return out


def environment(device):
    env = dict(torch=torch.__version__, python=platform.python_version(),
               device=device, threads=torch.get_num_threads(),
               ext=ext_info(), cpu=_cpu_name(),
               cpu_capability=torch.backends.cpu.get_cpu_capability())
    if device == 'cuda':
        env['gpu'] = torch.cuda.get_device_name()
    return env


def _cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            m = re.search(r'model name\s*:\s*(.*)', f.read())
        return m.group(1).strip() if m else platform.processor()
    except OSError:
        return platform.processor()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--dtype', default='float32',
                        choices=['float32', 'float16', 'bfloat16'])
    parser.add_argument('--suite', default='all',
                        choices=['resnet20', 'resnet50', 'all'])
    parser.add_argument('--repeat', type=int, default=5,
                        help='timed calls per measurement (median)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--model-step', action='store_true',
                        help='also time an AdderResNet-20 training step')
    parser.add_argument('--no-unfold', dest='unfold', action='store_false',
                        help='skip the paper\'s unfold formulation')
    parser.add_argument('--unfold-max-mib', type=float, default=1024,
                        help='skip the unfold form where one [Cout, K, N*L] '
                        'temporary exceeds this (MiB)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads (default: torch\'s); '
                        'on a shared machine 1 thread shows the kernels '
                        'without OpenMP barrier contention')
    parser.add_argument('--cpu-isa', choices=['generic', 'avx2', 'avx512'],
                        help='cap the CPU kernels at this instruction-set '
                        'level (default: the best this CPU has)')
    parser.add_argument('--int8', action='store_true',
                        help='CPU: time the integer adder (adder2d_int8, '
                        'fused dequantization) against the float32 adder, '
                        'PyTorch\'s INT8 conv and float32 conv instead')
    parser.add_argument('--onednn-max-isa', default=None,
                        help='set ONEDNN_MAX_CPU_ISA (e.g. AVX2_VNNI) for '
                        'torch\'s oneDNN convolutions; takes effect only '
                        'before oneDNN first runs in the process (--int8 '
                        'prints the kernel it ran)')
    parser.add_argument('--layers', default=None,
                        help='comma-separated layer names to run (default all)')
    parser.add_argument('--out', help='write results as JSON')
    parser.add_argument('--markdown', help='write the table as markdown')
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error('--repeat must be >= 1 and --warmup >= 0')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be >= 1')
    if args.int8 and args.device != 'cpu':
        parser.error('--int8 is CPU only (adder2d_int8 has no CUDA kernel)')
    return args


def main(argv=None):
    args = parse_args(argv)
    if (args.device == 'cpu' and _MMAP_ENV not in os.environ
            and sys.platform.startswith('linux') and argv is None
            and not args.int8):
        # Fixed mmap threshold: freed large blocks leave the resident set.
        os.environ[_MMAP_ENV] = str(128 * 1024)
        os.execv(sys.executable, [sys.executable] + sys.argv)
    if (args.int8 and _INT8_MMAP_ENV not in os.environ
            and sys.platform.startswith('linux') and argv is None):
        # malloc recycles freed outputs instead of unmapping them (see the
        # module docstring): the times are the ops', not page faults'.
        os.environ[_INT8_MMAP_ENV] = '0'
        os.environ.setdefault('MALLOC_TRIM_THRESHOLD_', str(1 << 36))
        os.execv(sys.executable, [sys.executable] + sys.argv)
    device = args.device
    if args.onednn_max_isa:
        os.environ['ONEDNN_MAX_CPU_ISA'] = args.onednn_max_isa
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.cpu_isa is not None:
        set_cpu_isa(args.cpu_isa)
    if device == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('--device cuda: no CUDA device is available')
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        # cuDNN's autotuned algorithm: the conv baseline at its fastest.
        torch.backends.cudnn.benchmark = True
    dtype = getattr(torch, args.dtype)
    suites = (['resnet20', 'resnet50'] if args.suite == 'all' else
              [args.suite])
    wanted = set(args.layers.split(',')) if args.layers else None
    if args.int8:
        return main_int8(args, suites, wanted)
    env = environment(device)
    print(f"# {env['cpu'] if device == 'cpu' else env.get('gpu')}, "
          f"torch {env['torch']}, {env['threads']} threads, {args.dtype}, "
          f"ext {env['ext']}")
    results = []
    for suite in suites:
        layers = resnet20_layers() if suite == 'resnet20' else resnet50_layers()
        for lay in layers:
            if wanted and lay['name'] not in wanted:
                continue
            r = bench_layer(lay, args, device, dtype)
            r['suite'] = suite
            results.append(r)
            print(f"{suite:8s} {r['name']:15s} N{r['N']} C{r['C']} "
                  f"{r['H']}x{r['W']} O{r['O']} k{r['k']} s{r['stride']}: "
                  f"fwd conv {r['conv_fwd_ms']:.1f} adder "
                  f"{r['adder_fwd_ms']:.1f} ms (x{_fmt(r['adder_over_conv_fwd'])})"
                  f" | f+b conv {r['conv_fwdbwd_ms']:.1f} adder "
                  f"{r['adder_fwdbwd_ms']:.1f} ms "
                  f"(x{_fmt(r['adder_over_conv_fwdbwd'])}) | peak "
                  f"x{_fmt(r['adder_over_conv_peak'])} | unfold/adder fwd "
                  f"{_fmt(r['unfold_over_adder_fwd'], 0)}", flush=True)
    summ = summary(results)
    table = markdown_table(results)
    print('\n' + table + '\n')
    for key, v in summ.items():
        print(f"{key}: median {v['median']:.2f} (min {v['min']:.2f}, "
              f"max {v['max']:.2f}, n={v['count']})")
    model = bench_model_step(args, device, dtype) if args.model_step else None
    if model:
        print(f"{model['model']} training step (batch 64): adder "
              f"{model['adder_step_ms']:.1f} ms, CNN twin "
              f"{model['conv_step_ms']:.1f} ms, ratio "
              f"{model['adder_over_conv_step']:.2f}; peak "
              f"{_fmt(model['adder_step_peak_mib'], 0)} vs "
              f"{_fmt(model['conv_step_peak_mib'], 0)} MiB")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(env=env, args=vars(args), layers=results,
                           summary=summ, model_step=model), f, indent=1)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(f"{env['cpu'] if device == 'cpu' else env.get('gpu')}, "
                    f"torch {env['torch']}, {env['threads']} threads, "
                    f"{args.dtype}\n\n{table}\n")
            if model:
                f.write(f"\n{model['model']} training step (batch 64): "
                        f"{model['adder_step_ms']:.1f} ms vs CNN "
                        f"{model['conv_step_ms']:.1f} ms "
                        f"(x{model['adder_over_conv_step']:.2f})\n")
    return results


if __name__ == '__main__':
    main()
