"""Speed and memory of adder2d against F.conv2d and the paper's unfold form.

    python tools/analysis_tools/benchmark_adder.py [--device cpu|cuda]
        [--dtype float32|float16|bfloat16] [--suite resnet20|resnet50|all]
        [--batch B] [--repeat N] [--warmup N]
        [--model-step [resnet20|resnet50]]
        [--step-batch B] [--no-unfold] [--unfold-max-mib M]
        [--cpu-isa generic|avx2|avx512] [--int8] [--int8-model]
        [--onednn-max-isa ISA] [--out FILE.json]
        [--markdown FILE.md [--section NAME]]

For every distinct adder layer of ResNet-20 (CIFAR 32x32, batch 64) and
ResNet-50 (ImageNet 224x224, batch 32), or at --batch: median wall time of
the forward and of forward+backward (grad of input and weight) of

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
ran (from oneDNN's verbose log; per layer in the JSON). It measures no
memory; instead the script re-executes itself with MALLOC_MMAP_MAX_=0 and a
large MALLOC_TRIM_THRESHOLD_, so that glibc recycles freed outputs as a caching
allocator would: otherwise every output above 32 MiB is a fresh mmap whose
page faults (about 0.2-0.4 ms per MiB on the VM this was written on) would
dominate the layers with large float32 outputs, four times the bytes of
torch's uint8 ones. Set MALLOC_MMAP_MAX_ yourself to time with glibc's
defaults (any value stops the re-execution).

``--model-step`` times a whole training step (forward, cross entropy,
backward, SGD step, batch ``--step-batch``) of ResNet-20 (32x32, the layers
and parameters of AdderResNet_CIFAR) or ResNet-50 (224x224, torchvision's
layout and parameters), both built from AdderConv2d with torch alone,
against the CNN twin; with ``--dtype float16/bfloat16`` under autocast
(mixed precision, float weights). ``--int8-model`` times inference of the
digits-shaped ResNet-20 in float32 against its post-training quantized
(INT8, shared grid) self.
CUDA: TF32 off, cuDNN autotuned (cudnn.benchmark), each sample a run of
back-to-back calls of at least 2 ms timed with CUDA events. The measuring
code is adder_mm/analysis/benchmark.py (torch alone).

``--markdown FILE`` writes the tables, headed by the machine (CPU model and
ISA flags, GPU, torch, threads) and the date, into FILE's section
``--section`` (default: one per mode and device), e.g. docs/benchmarks.md.
"""
import argparse
import json
import os
import sys

import torch

from adder_mm.analysis.benchmark import (
    _fmt,
    _ms,
    bench_int8_layer,
    bench_int8_model,
    bench_layer,
    bench_model_step,
    bench_tile_sweep,
    environment,
    int8_markdown_table,
    int8_summary,
    markdown_table,
    qconv_impl,
    select_layers,
    summary,
    tile_sweep_markdown,
    tile_sweep_summary,
)
from adder_mm.ops import set_cpu_isa
from adder_mm.utils import write_atomic
from adder_mm.utils.machine import describe
from adder_mm.utils.markdown import write_section

_MMAP_ENV = 'MALLOC_MMAP_THRESHOLD_'
_INT8_MMAP_ENV = 'MALLOC_MMAP_MAX_'


def main_int8(args, suites, wanted):
    import warnings
    with warnings.catch_warnings():
        # torch 2.14 deprecates quantized tensors; they are the baseline here
        warnings.filterwarnings('ignore', message='torch.quantize_per_tensor')
        return _main_int8(args, suites, wanted)


def _main_int8(args, suites, wanted):
    torch.backends.quantized.engine = 'x86'
    env = environment('cpu')
    results = []
    for suite, lay in select_layers(suites, wanted, args.batch):
        if not results:
            print(_int8_header(env, args), flush=True)
        r = bench_int8_layer(lay, args)
        r['suite'] = suite
        r['int8_conv_impl'] = qconv_impl(lay)
        results.append(r)
        _write_json(args.out, env, args, results, int8_summary(results))
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
    _write_json(args.out, env, args, results, summ)
    text = _int8_header(env, args).lstrip('# ') + '\n\n' + table + \
        '\n\n' + summary_lines(summ)
    model = bench_int8_model(args.repeat, args.warmup) \
        if args.int8_model else None
    line = int8_model_line(model) if model else ''
    if model:
        print(line)
        text += '\n\n' + line
    if args.markdown:
        write_section(args.markdown, args.section or 'cpu-int8', text)
    if args.summary_markdown:
        brief = _int8_header(env, args).lstrip('# ') + '\n\n' + \
            summary_lines(summ) + (('\n\n' + line) if model else '')
        write_section(args.summary_markdown, args.section or 'cpu-int8',
                      brief)
    return results


def _int8_header(env, args):
    malloc = os.environ.get(_INT8_MMAP_ENV)
    malloc = ('outputs recycled by malloc' if malloc == '0' else
              'glibc malloc defaults' if malloc is None else
              f'{_INT8_MMAP_ENV}={malloc}')
    impl = env.get('int8_conv_impl')
    return (f"# INT8 mode: {describe(env)}"
            f", {env['threads']} threads, {malloc}; "
            f"adder kernels {env['ext']['cpu_isa']}"
            + (f"; torch int8 conv (x86 engine) {impl}" if impl else '')
            + '; written by tools/analysis_tools/benchmark_adder.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--dtype', default='float32',
                        choices=['float32', 'float16', 'bfloat16'])
    parser.add_argument('--batch', type=int, default=None,
                        help='batch of every layer (default: 64 for '
                        'resnet20, 32 for resnet50; 1 for inference '
                        'latency)')
    parser.add_argument('--suite', default='all',
                        choices=['resnet20', 'resnet50', 'all'])
    parser.add_argument('--repeat', type=int, default=5,
                        help='timed calls per measurement (median)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--model-step', nargs='?', const='resnet20',
                        choices=['resnet20', 'resnet50'],
                        help='also time a training step of this AdderNet '
                        'against its CNN twin (default resnet20)')
    parser.add_argument('--step-batch', type=int, default=64,
                        help='batch of --model-step (default 64)')
    parser.add_argument('--int8-model', action='store_true',
                        help='CPU: also time inference of the quantized '
                        'digits ResNet-20 against its float32 self')
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
    parser.add_argument('--tile-sweep', default=None, metavar='TILES',
                        help='CUDA: instead of the layer table, time every '
                        'layer with the automatic tile choice and with each '
                        'forced shape in this comma-separated list of 0..3 '
                        '(ADDER_MM_CUDA_TILE), alternating call by call')
    parser.add_argument('--skip-layers', action='store_true',
                        help='no per-layer table (only --model-step / '
                        '--int8-model)')
    parser.add_argument('--layers', default=None,
                        help='comma-separated layer names to run (default '
                        'all)')
    parser.add_argument('--out', help='write results as JSON')
    parser.add_argument('--markdown', help='write the tables into this '
                        'markdown file (its section --section)')
    parser.add_argument('--summary-markdown', default=None,
                        help='also write the summary lines only (no '
                        'per-layer table) into this file\'s section, e.g. '
                        'README.md')
    parser.add_argument('--section', default=None,
                        help='section of --markdown (default: '
                        '<device>-<dtype>, or cpu-int8)')
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error('--repeat must be >= 1 and --warmup >= 0')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be >= 1')
    if (args.int8 or args.int8_model) and args.device != 'cpu':
        parser.error('--int8/--int8-model are CPU only (adder2d_int8 has no '
                     'CUDA kernel)')
    if args.step_batch < 1:
        parser.error('--step-batch must be >= 1')
    if args.tile_sweep is not None:
        tiles = args.tile_sweep.split(',')
        if not all(t in ('0', '1', '2', '3') for t in tiles) or len(
                set(tiles)) != len(tiles):
            parser.error('--tile-sweep takes distinct tile shapes 0..3, '
                         f'comma-separated; got {args.tile_sweep!r}')
        if args.device != 'cuda':
            parser.error('--tile-sweep is CUDA only (the CPU kernels have '
                         'no tile shapes to force)')
        if args.model_step or args.int8 or args.skip_layers:
            parser.error('--tile-sweep replaces the layer table; run '
                         '--model-step/--int8/--skip-layers separately')
        args.tile_sweep = [int(t) for t in tiles]
    if args.batch is not None and args.batch < 1:
        parser.error('--batch must be >= 1')
    if args.layers:
        known = [lay['name'] for _, lay in select_layers(suites_of(args))]
        unknown = sorted(set(args.layers.split(',')) - set(known))
        if unknown:  # (it benchmarked nothing and wrote an empty table)
            parser.error(f'--layers: no layer {", ".join(unknown)} in '
                         f'--suite {args.suite}; its layers: '
                         f'{", ".join(dict.fromkeys(known))}')
    return args


def suites_of(args):
    """The layer suites --suite names."""
    return ['resnet20', 'resnet50'] if args.suite == 'all' else [args.suite]


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
    suites = suites_of(args)
    wanted = set(args.layers.split(',')) if args.layers else None
    if args.skip_layers:
        wanted = set()
    if args.int8:
        return main_int8(args, suites, wanted)
    if args.tile_sweep:
        return main_tiles(args, suites, wanted, dtype)
    env = environment(device)
    print(f"# {describe(env)}, {env['threads']} threads, {args.dtype}, "
          f"ext {env['ext']}")
    results = []
    for suite, lay in select_layers(suites, wanted, args.batch):
        r = bench_layer(lay, args, device, dtype)
        r['suite'] = suite
        results.append(r)
        # the layers so far, so that a run cut short keeps them
        _write_json(args.out, env, args, results, summary(results))
        print(f"{suite:8s} {r['name']:15s} N{r['N']} C{r['C']} "
              f"{r['H']}x{r['W']} O{r['O']} k{r['k']} s{r['stride']}: "
              f"fwd conv {r['conv_fwd_ms']:.1f} adder "
              f"{r['adder_fwd_ms']:.1f} ms "
              f"(x{_fmt(r['adder_over_conv_fwd'])})"
              f" | f+b conv {r['conv_fwdbwd_ms']:.1f} adder "
              f"{r['adder_fwdbwd_ms']:.1f} ms "
              f"(x{_fmt(r['adder_over_conv_fwdbwd'])}) | peak "
              f"x{_fmt(r['adder_over_conv_peak'])} | unfold/adder fwd "
              f"{_fmt(r['unfold_over_adder_fwd'], 0)}", flush=True)
    summ = summary(results)
    table = markdown_table(results)
    if results:
        print('\n' + table + '\n')
    for key, v in summ.items():
        print(f"{key}: median {v['median']:.2f} (min {v['min']:.2f}, "
              f"max {v['max']:.2f}, n={v['count']})")
    model = bench_model_step(
        args.model_step, device, dtype, args.repeat, args.warmup,
        args.step_batch) if args.model_step else None
    if model:
        print(model_step_line(model))
    int8_model = bench_int8_model(args.repeat, args.warmup) \
        if args.int8_model else None
    if int8_model:
        print(int8_model_line(int8_model))
    _write_json(args.out, env, args, results, summ, model_step=model,
                int8_model=int8_model)
    kernels = env['ext'].get('cpu_isa') if device == 'cpu' else 'cuda'
    if env['switches']:
        kernels += ' (' + ', '.join(
            f'{k}={v}' for k, v in env['switches'].items()) + ')'
    head = (f"{describe(env)}, {env['threads']} threads, {args.dtype}, "
            f"adder kernels {kernels}; written by "
            "tools/analysis_tools/benchmark_adder.py.")
    extras = ''.join('\n\n' + line for line in (
        model and model_step_line(model),
        int8_model and int8_model_line(int8_model)) if line)
    section = args.section or f'{device}-{args.dtype}'
    if args.markdown:
        body = f"\n\n{table}\n\n{summary_lines(summ)}" if results else ''
        write_section(args.markdown, section, head + body + extras)
    if args.summary_markdown:
        body = f"\n\n{summary_lines(summ)}" if results else ''
        write_section(args.summary_markdown, section, head + body + extras)
    return results


def main_tiles(args, suites, wanted, dtype):
    env = environment(args.device)
    head = (f"{describe(env)}, {args.dtype}, tile sweep (ADDER_MM_CUDA_TILE "
            f"auto and {', '.join(map(str, args.tile_sweep))}); written by "
            "tools/analysis_tools/benchmark_adder.py.")
    print('# ' + head, flush=True)
    results = []
    for suite, lay in select_layers(suites, wanted, args.batch):
        r = bench_tile_sweep(lay, args.tile_sweep, args.device, dtype,
                             args.repeat, args.warmup)
        r['suite'] = suite
        results.append(r)
        _write_json(args.out, env, args, results,
                    tile_sweep_summary(results)[1])
        print(f"{suite:8s} {r['name']:15s} fwd ms conv "
              f"{_ms(r['conv_fwd_ms'])} " + ' '.join(
                  f'{k} {_ms(v)}' for k, v in r['tile_fwd_ms'].items()) +
              f" | f+b ms conv {_ms(r['conv_fwdbwd_ms'])} " + ' '.join(
                  f'{k} {_ms(v)}' for k, v in r['tile_fwdbwd_ms'].items()),
              flush=True)
    text = tile_sweep_markdown(results)
    print('\n' + text)
    if args.markdown:
        write_section(args.markdown,
                      args.section or f'{args.device}-{args.dtype}-tiles',
                      head + '\n\n' + text)
    return results


def _write_json(path, env, args, results, summ, **extra):
    """The results as JSON (nothing without ``path``), written to a
    temporary file renamed into place: rewritten after every layer, the
    file is always whole."""
    if not path:
        return

    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(dict(env=env, args=vars(args), layers=results,
                           summary=summ, **extra), f, indent=1)

    write_atomic(path, write)


def summary_lines(summ):
    return '\n'.join(
        f"- {key}: median {v['median']:.2f} (min {v['min']:.2f}, max "
        f"{v['max']:.2f}, {v['count']} layers)" for key, v in summ.items())


def model_step_line(m):
    amp = f", autocast {m['amp']}" if m['amp'] else ''
    return (f"{m['model']} training step, batch {m['batch']}{amp}: adder "
            f"{m['adder_step_ms']:.1f} ms, CNN twin {m['conv_step_ms']:.1f} "
            f"ms, ratio {m['adder_over_conv_step']:.2f}; peak memory "
            f"{_fmt(m['adder_step_peak_mib'], 0)} vs "
            f"{_fmt(m['conv_step_peak_mib'], 0)} MiB")


def int8_model_line(m):
    return (f"{m['model']} inference, batch {m['batch']}: float32 "
            f"{m['float_ms']:.1f} ms ({m['float_images_s']:.0f} images/s), "
            f"INT{m['bits']} ({m['method']}) {m['int_ms']:.1f} ms "
            f"({m['int_images_s']:.0f} images/s): "
            f"{m['float_over_int']:.2f}x faster quantized")


if __name__ == '__main__':
    main()
