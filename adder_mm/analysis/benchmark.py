"""The measurements of tools/analysis_tools/benchmark_adder.py (torch
alone): the ResNet-20/50 adder layer shapes, the paper's unfold formulation,
call-by-call alternating timers and peak memory, per-layer float and INT8
benchmarks, and torch-only ResNet-20/50 built from AdderConv2d for whole
training steps and quantized inference. The tool's docstring says what is
measured and how."""
import os
import platform
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from adder_mm.models.layers import AdderConv2d
from adder_mm.ops import adder2d, adder2d_int8, ext_info
from adder_mm.utils.machine import machine_info


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
            out_hw = (hw + 2 - 3) // s + 1
            layers += [
                _layer(f'{tag}.conv1', batch, cin, hw, width, 3, s, 1),
                _layer(f'{tag}.conv2', batch, width, out_hw, width, 3, 1, 1)]
            if s != 1 or cin != width:
                layers.append(
                    _layer(f'{tag}.down', batch, cin, hw, width, 1, s, 0))
            cin, hw = width, out_hw
    return _distinct(layers)


def resnet50_layers(batch=32):
    """Distinct adder layers of ResNet-50 (torchvision's layout: stride on
    the 3x3), as :func:`resnet50_torch` builds it."""
    layers, hw, cin = [], 56, 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6),
                                             (512, 3))):
        for block in range(blocks):
            s = 2 if (block == 0 and stage > 0) else 1
            out_hw = (hw + 2 - 3) // s + 1
            tag = f'layer{stage + 1}.{block}'
            layers += [
                _layer(f'{tag}.conv1', batch, cin, hw, width, 1, 1, 0),
                _layer(f'{tag}.conv2', batch, width, hw, width, 3, s, 1),
                _layer(f'{tag}.conv3', batch, width, out_hw, width * 4, 1, 1,
                       0)]
            if block == 0:
                layers.append(
                    _layer(f'{tag}.down', batch, cin, hw, width * 4, 1, s, 0))
            cin, hw = width * 4, out_hw
    return _distinct(layers)


def _layer(name, n, c, hw, o, k, s, p):
    return dict(name=name, N=n, C=c, H=hw, W=hw, O=o, k=k, stride=s, pad=p)


def _distinct(layers):
    seen, out = set(), []
    for lay in layers:
        key = tuple(lay[k] for k in ('N', 'C', 'H', 'W', 'O', 'k', 'stride',
                                     'pad'))
        if key not in seen:
            seen.add(key)
            out.append(lay)
    return out


def select_layers(suites, wanted=None, batch=None):
    """(suite, layer) of the suites ('resnet20', 'resnet50') in order, only
    the layer names in ``wanted`` when given; ``batch`` replaces the suites'
    own (64 and 32), e.g. 1 for inference latency."""
    for suite in suites:
        build = resnet20_layers if suite == 'resnet20' else resnet50_layers
        layers = build() if batch is None else build(batch)
        for lay in layers:
            if wanted is None or lay['name'] in wanted:
                yield suite, lay


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


def _layer_calls(lay, device, dtype):
    """The layer's ops on random inputs: ``(ops, fwd, step)`` where
    ``fwd(op)`` / ``step(op)`` make a callable running the forward without
    gradients / forward and backward of ``op`` ('adder', 'conv' or
    'unfold' from ``ops``)."""
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

    return ops, fwd, step


def bench_layer(lay, args, device, dtype):
    ops, fwd, step = _layer_calls(lay, device, dtype)
    names = ['adder', 'conv']
    elem = torch.finfo(dtype).bits // 8
    unfold_mib = unfold_temp_bytes(lay, elem) / 2**20
    if args.unfold and unfold_mib <= args.unfold_max_mib:
        names.append('unfold')
    res = dict(lay)
    res['unfold_temp_mib'] = round(unfold_mib, 1)
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
        a = res.get(f'adder_{what}_{unit}')
        u = res.get(f'unfold_{what}_{unit}')
        res[f'unfold_over_adder_{what}'] = (u / a) if a and u else None
    return res


# ------------------------------------------------------ CUDA tile sweep
TILE_ENV = 'ADDER_MM_CUDA_TILE'


def bench_tile_sweep(lay, tiles, device, dtype, repeat, warmup):
    """cuDNN's conv and the adder with the automatic tile choice and with
    each forced shape in ``tiles`` (0..3, ADDER_MM_CUDA_TILE set around
    every call), all alternating call by call, forward and forward+backward.
    Setting the variable adds about a microsecond of host time per adder
    call, alike for every shape; on launch-bound layers it nudges adder/conv
    up a little.

    Returns the layer dict with ``tile_fwd_ms`` / ``tile_fwdbwd_ms``
    ({'auto' or str(tile): median ms}) and ``conv_fwd_ms`` /
    ``conv_fwdbwd_ms``. The variable is restored afterwards.
    """
    ops, fwd, step = _layer_calls(lay, device, dtype)
    names = ['auto'] + [str(t) for t in tiles]
    saved = os.environ.get(TILE_ENV)

    def forced(name, fn):
        def run():  # 'auto' is not 0..3: the automatic choice
            os.environ[TILE_ENV] = name
            fn()
        return run

    res = dict(lay)
    try:
        for what, make in (('fwd', fwd), ('fwdbwd', step)):
            fns = [make(ops['conv'])] + [forced(n, make(ops['adder']))
                                         for n in names]
            medians, _ = interleaved_times(fns, device, repeat, warmup)
            res[f'conv_{what}_ms'] = 1e3 * medians[0]
            res[f'tile_{what}_ms'] = {n: 1e3 * t
                                      for n, t in zip(names, medians[1:])}
    finally:
        if saved is None:
            os.environ.pop(TILE_ENV, None)
        else:
            os.environ[TILE_ENV] = saved
    return res


def tile_sweep_summary(results):
    """Per layer the fastest shape for the forward and for the backward
    (forward+backward less forward: one index forces both), and adder/cuDNN
    median and max over layers of each way of choosing: ``'auto'``, each
    shape everywhere, ``'best'`` per layer (forward and backward apart).

    Returns ``(rows, ways)``: rows of (result, backward ms {name: ms},
    fastest forward shape, fastest backward shape), ways {name:
    dict(fwd=(median, max), fwdbwd=(median, max))}.
    """
    rows, ratios = [], {}

    def add(name, what, value):
        ratios.setdefault(name, {'fwd': [], 'fwdbwd': []})[what].append(
            value)

    for r in results:
        t_f, t_fb = r['tile_fwd_ms'], r['tile_fwdbwd_ms']
        t_b = {n: t_fb[n] - t_f[n] for n in t_f}
        shapes = [n for n in t_f if n != 'auto']
        kf = min(shapes, key=t_f.get)
        kb = min(shapes, key=t_b.get)
        rows.append((r, t_b, kf, kb))
        for n in t_f:
            add(n, 'fwd', t_f[n] / r['conv_fwd_ms'])
            add(n, 'fwdbwd', t_fb[n] / r['conv_fwdbwd_ms'])
        add('best', 'fwd', t_f[kf] / r['conv_fwd_ms'])
        add('best', 'fwdbwd', (t_f[kf] + t_b[kb]) / r['conv_fwdbwd_ms'])
    ways = {n: {w: (statistics.median(v), max(v)) for w, v in d.items()}
            for n, d in ratios.items()}
    return rows, ways


def tile_sweep_markdown(results):
    """The summary lines and the per-layer table of a tile sweep."""
    rows, ways = tile_sweep_summary(results)
    if not rows:
        return ''
    lines = [f'Tile choice over {len(rows)} layers, adder/cuDNN median / '
             'max:']
    for name, v in ways.items():
        label = {'auto': 'automatic', 'best': 'best per layer (forward '
                 'and backward apart)'}.get(name, f'tile {name} everywhere')
        lines.append(f"- {label}: forward {v['fwd'][0]:.2f} / "
                     f"{v['fwd'][1]:.2f}, forward+backward "
                     f"{v['fwdbwd'][0]:.2f} / {v['fwdbwd'][1]:.2f}")
    shapes = [n for n in rows[0][0]['tile_fwd_ms'] if n != 'auto']
    cols = ' | '.join(f'tile {n}' for n in shapes)
    lines += ['', 'Milliseconds; backward = forward+backward less forward; '
              'auto/best: the automatic choice over the fastest shape.', '',
              f'| suite | layer | N,C,HxW -> O, k/s | fwd auto | {cols} | '
              f'fastest | auto/best | bwd auto | {cols} | fastest | '
              'auto/best |',
              '|' + '---|' * (9 + 2 * len(shapes))]
    for r, t_b, kf, kb in rows:
        t_f = r['tile_fwd_ms']
        cells = [r['suite'], r['name'],
                 f"{r['N']},{r['C']},{r['H']}x{r['W']} -> {r['O']}, "
                 f"{r['k']}/{r['stride']}"]
        for t, k in ((t_f, kf), (t_b, kb)):
            cells += [_ms(t['auto'])] + [_ms(t[n]) for n in shapes] + [
                k, _fmt(t['auto'] / t[k])]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


# ------------------------------------------------------------- INT8 mode
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


def _layer_table(results, columns):
    """Markdown table of per-layer results: suite, layer and shape, then
    ``columns`` as (header, function of a result giving the cell)."""
    head = ('| suite | layer | N,C,HxW -> O, k/s | ' +
            ' | '.join(h for h, _ in columns) + ' |')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for r in results:
        shape = (f"{r['N']},{r['C']},{r['H']}x{r['W']} -> {r['O']}, "
                 f"{r['k']}/{r['stride']}")
        lines.append(f"| {r['suite']} | {r['name']} | {shape} | " +
                     ' | '.join(cell(r) for _, cell in columns) + ' |')
    return '\n'.join(lines)


def int8_markdown_table(results):
    return _layer_table(results, [
        ('int8 adder ms', lambda r: _ms(r['int8_adder_ms'])),
        ('fp32 adder ms', lambda r: _ms(r['fp32_adder_ms'])),
        ('int8 conv ms', lambda r: _ms(r['int8_conv_ms'])),
        ('fp32 conv ms', lambda r: _ms(r['fp32_conv_ms'])),
        ('fp32 adder / int8 adder',
         lambda r: _fmt(r['fp32_adder_over_int8_adder'])),
        ('int8 adder / int8 conv',
         lambda r: _fmt(r['int8_adder_over_int8_conv'])),
    ])


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


# ---------------------------------------------------------------- models
def resnet50_torch(adder):
    """ResNet-50 in plain torch, torchvision's layout (stride on the 3x3,
    25.56M parameters): a 7x7 stem conv, BN, ReLU, 3x3 max pool, 3+4+6+3
    bottlenecks (1x1, 3x3, 1x1 to 4x the width; 1x1 conv + BN shortcut on a
    change of shape), average pool and a 1000-way linear layer. Every conv of
    the residual stages is an AdderConv2d when ``adder`` (the stem conv and
    the classifier stay multiplications, as in the paper); the layers are
    those of :func:`resnet50_layers`."""
    nn = torch.nn
    conv = _conv_factory(adder)
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
              nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6),
                                             (512, 3))):
        for block in range(blocks):
            stride = 2 if stage and not block else 1
            layers.append(_bottleneck(cin, width, stride, conv))
            cin = width * 4
    return nn.Sequential(*layers, _Head(cin, 1000))


MODELS = {
    # name: (builder of (adder) -> nn.Module, input size, classes)
    'resnet20': (lambda adder: torch.nn.Sequential(
        resnet20_torch(adder), _Head(64, 10)), 32, 10),
    'resnet50': (resnet50_torch, 224, 1000),
}


def bench_model_step(model, device, dtype, repeat, warmup, batch=64):
    """One training step (forward, cross entropy, backward, SGD step) of
    the torch-only AdderNet ``model`` ('resnet20' or 'resnet50', built from
    AdderConv2d) against its CNN twin, the two alternating. Float weights;
    with dtype float16/bfloat16 the forward runs under autocast (mixed
    precision training, as ImageNet users train)."""
    build, size, classes = MODELS[model]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, classes, (batch, ), generator=gen).to(device)
    amp = dtype != torch.float32
    steps = {}
    for name in ('adder', 'conv'):
        net = build(name == 'adder').to(device)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step(net=net, opt=opt):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=dtype, enabled=amp):
                loss = F.cross_entropy(net(x).float(), y)
            loss.backward()
            opt.step()

        steps[name] = step
    (ta, tc), (ratio, ) = interleaved_times([steps['adder'], steps['conv']],
                                            device, repeat, warmup)
    out = dict(model=f'{model} (torch only, AdderConv2d)', batch=batch,
               amp=str(dtype).replace('torch.', '') if amp else None,
               adder_step_ms=1e3 * ta, conv_step_ms=1e3 * tc,
               adder_over_conv_step=ratio)
    for name, step in steps.items():
        step()
        peak = peak_bytes(step, device)
        out[f'{name}_step_peak_mib'] = None if peak is None else peak / 2**20
    if out['adder_step_peak_mib'] and out['conv_step_peak_mib']:
        out['adder_over_conv_step_peak'] = (out['adder_step_peak_mib'] /
                                            out['conv_step_peak_mib'])
    return out


@torch.no_grad()
def bench_int8_model(repeat, warmup, batch=64, bits=8, method='shared'):
    """Inference of the digits-shaped AdderNet ResNet-20 (32x32, 10
    classes) in float32 against the same network quantized by
    adder_mm.quantization (adder layers on integers; stem, BN and
    classifier float), the two alternating; CPU."""
    from adder_mm.quantization import quantize_model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    net = MODELS['resnet20'][0](True).eval()
    qnet = MODELS['resnet20'][0](True).eval()
    qnet.load_state_dict(net.state_dict())
    calib = [torch.randn(batch, 3, 32, 32, generator=gen) for _ in range(2)]
    quantize_model(qnet, calib, num_batches=2, bits=bits, method=method)
    (tf, tq), (ratio, ) = interleaved_times([lambda: net(x),
                                             lambda: qnet(x)], 'cpu',
                                            repeat, warmup)
    return dict(model='resnet20 (digits input 3x32x32)', batch=batch,
                bits=bits, method=method, float_ms=1e3 * tf,
                int_ms=1e3 * tq, float_over_int=ratio,
                float_images_s=batch / tf, int_images_s=batch / tq)


def _conv_factory(adder):
    """``conv(cin, cout, k, stride)``: an AdderConv2d or a bias-free
    nn.Conv2d, padding k // 2."""
    def conv(cin, cout, k, stride):
        if adder:
            return AdderConv2d(cin, cout, k, stride, k // 2)
        return torch.nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    return conv


def _shortcut(cin, cout, stride, conv):
    """Identity, or a 1x1 conv + BN where the block changes the shape."""
    nn = torch.nn
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


class _Residual(torch.nn.Module):
    """``relu(body(x) + short(x))``."""

    def __init__(self, body, short):
        super().__init__()
        self.body, self.short = body, short

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def _basic_block(cin, cout, stride, conv):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut, ReLU: mmpretrain's
    ResNet_CIFAR block."""
    nn = torch.nn
    return _Residual(
        nn.Sequential(conv(cin, cout, 3, stride), nn.BatchNorm2d(cout),
                      nn.ReLU(inplace=True), conv(cout, cout, 3, 1),
                      nn.BatchNorm2d(cout)),
        _shortcut(cin, cout, stride, conv))


def _bottleneck(cin, width, stride, conv):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1-BN to 4x ``width``
    + shortcut, ReLU: torchvision's ResNet-50 block."""
    nn = torch.nn
    return _Residual(
        nn.Sequential(conv(cin, width, 1, 1), nn.BatchNorm2d(width),
                      nn.ReLU(inplace=True), conv(width, width, 3, stride),
                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                      conv(width, width * 4, 1, 1),
                      nn.BatchNorm2d(width * 4)),
        _shortcut(cin, width * 4, stride, conv))


def resnet20_torch(adder):
    """The paper's CIFAR ResNet-20 in plain torch: an ordinary 3x3 stem conv
    to 16 channels, 3 stages x 3 blocks (16, 32, 64), adder or conv layers.
    Same layers and parameters as AdderResNet_CIFAR(depth=20)."""
    nn = torch.nn
    conv = _conv_factory(adder)
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
              nn.ReLU(inplace=True)]
    cin = 16
    for i, cout in enumerate((16, 32, 64)):
        for j in range(3):
            layers.append(_basic_block(cin, cout, 2 if i and not j else 1,
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
    return _layer_table(results, [
        ('conv fwd ms', lambda r: _ms(r['conv_fwd_ms'])),
        ('adder fwd ms', lambda r: _ms(r['adder_fwd_ms'])),
        ('adder/conv fwd', lambda r: _fmt(r['adder_over_conv_fwd'])),
        ('conv f+b ms', lambda r: _ms(r['conv_fwdbwd_ms'])),
        ('adder f+b ms', lambda r: _ms(r['adder_fwdbwd_ms'])),
        ('adder/conv f+b', lambda r: _fmt(r['adder_over_conv_fwdbwd'])),
        ('adder/conv peak mem', lambda r: _fmt(r['adder_over_conv_peak'])),
        ('unfold/adder fwd', lambda r: _fmt(r['unfold_over_adder_fwd'], 0)),
        ('unfold/adder f+b',
         lambda r: _fmt(r['unfold_over_adder_fwdbwd'], 0)),
    ])


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
    """The machine, versions and the ADDER_MM_* switches a measurement ran
    under (kernel paths: ADDER_MM_CUDA_HALF2, ADDER_MM_CUDA_TILE, ...)."""
    env = dict(machine_info(), python=platform.python_version(),
               device=device, threads=torch.get_num_threads(),
               ext=ext_info(),
               cpu_capability=torch.backends.cpu.get_cpu_capability(),
               switches={k: v for k, v in sorted(os.environ.items())
                         if k.startswith('ADDER_MM_')})
    if device != 'cuda':
        env['gpu'] = None
    return env
