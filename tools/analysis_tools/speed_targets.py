"""The GPU speed targets of the kernel work, checked against the JSON files
that ``tools/gpu_check.sh`` leaves in its output folder.

    python tools/analysis_tools/speed_targets.py OUT_DIR

One line per target: ``PASS``, ``MISS`` (value and limit) or ``?`` (not
measured: its file is missing). Reads, all written by benchmark_adder.py:

- ``benchmark.json``: float32, every ResNet-20/50 layer, ResNet-20 step:
  adder/cuDNN forward and forward+backward at most 2.5 per layer and 2.0 in
  the median; the ResNet-20 step at most 1.15 its CNN twin's;
- ``benchmark_fp16.json`` and ``benchmark_fp16_packed.json``: float16
  ResNet-50 layers (float arithmetic / ADDER_MM_CUDA_HALF2=1): forward+
  backward at least 1.6x faster than float32 in the median;
- ``step_resnet50_<dtype>[_packed].json``: ResNet-50 training step at most
  1.6 (float32) or 3.0 (autocast bfloat16 / float16) its CNN twin's.

With ``--tiles``, instead: what the automatic tile choice costs, from
``tile_<k>.json`` (every layer with ``ADDER_MM_CUDA_TILE=k``, k = 0..3) beside
``benchmark.json`` (automatic choice). Per layer the fastest forced tile
for the forward and for the backward (forward+backward time less forward
time: the forced index applies to both), and for each choice the adder/cuDNN
median and max, cuDNN's times taken from ``benchmark.json``.

Exit status 0 whatever the verdicts (a missed target is a measurement, not
an error); 2 when OUT_DIR does not exist.
"""
import argparse
import json
import os
import statistics
import sys

# ResNet-50 training steps: (step_resnet50_<name>.json, adder/CNN at most).
STEP_TARGETS = (('float32', 1.6), ('bfloat16', 3.0), ('float16', 3.0),
                ('bfloat16_packed', 3.0), ('float16_packed', 3.0))


def _load(out, name):
    path = os.path.join(out, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _line(what, value, limit, smaller=True):
    if value is None:
        return f'?     {what}: not measured'
    ok = value <= limit if smaller else value >= limit
    return (f'{"PASS " if ok else "MISS "} {what}: {value:.2f} '
            f'({"<=" if smaller else ">="} {limit})')


def check_targets(out):
    """The verdict lines for the JSON files in folder `out`."""
    lines = []
    fp32 = _load(out, 'benchmark.json')
    if fp32:
        for key, name in (('adder_over_conv_fwd', 'forward'),
                          ('adder_over_conv_fwdbwd', 'forward+backward')):
            vals = [r[key] for r in fp32['layers']]
            lines.append(_line(f'fp32 {name} max over layers vs cuDNN',
                               max(vals) if vals else None, 2.5))
            lines.append(_line(f'fp32 {name} median vs cuDNN',
                               statistics.median(vals) if vals else None,
                               2.0))
        step = fp32.get('model_step')
        lines.append(_line('ResNet-20 step vs CNN (fp32)',
                           step and step['adder_over_conv_step'], 1.15))
    for tag, name in (('', 'benchmark_fp16.json'),
                      (' packed', 'benchmark_fp16_packed.json')):
        half = _load(out, name)
        if not (fp32 and half):
            lines.append(_line(f'fp16{tag} f+b speed-up over our fp32 '
                               '(ResNet-50 median)', None, 1.6, False))
            continue
        t32 = {r['name']: r['adder_fwdbwd_ms'] for r in fp32['layers']
               if r['suite'] == 'resnet50'}
        gains = [t32[r['name']] / r['adder_fwdbwd_ms']
                 for r in half['layers'] if r['name'] in t32]
        lines.append(_line(
            f'fp16{tag} f+b speed-up over our fp32 (ResNet-50 median)',
            statistics.median(gains) if gains else None, 1.6, smaller=False))
    for dt, limit in STEP_TARGETS:
        s = _load(out, f'step_resnet50_{dt}.json')
        lines.append(_line(f'ResNet-50 step vs CNN ({dt})',
                           s and s['model_step']['adder_over_conv_step'],
                           limit))
    return lines


TILES = (0, 1, 2, 3)


def _median_max(vals):
    return f'{statistics.median(vals):.2f} / {max(vals):.2f}'


def tile_report(out):
    """Lines saying which forced tile shape is fastest per layer, and the
    adder/cuDNN median / max of each way of choosing (automatic, one shape
    for all, the best per layer)."""
    auto = _load(out, 'benchmark.json')
    if not auto:
        return ['tile choice: no benchmark.json (the automatic choice)']
    forced = {k: _load(out, f'tile_{k}.json') for k in TILES}
    forced = {k: {(r['suite'], r['name']): r for r in v['layers']}
              for k, v in forced.items() if v}
    if not forced:
        return ['tile choice: no tile_<k>.json']
    layers = [r for r in auto['layers']
              if all((r['suite'], r['name']) in v for v in forced.values())]
    fwd = {'auto': [], 'best': []}
    fb = {'auto': [], 'best': []}
    rows = []
    for r in layers:
        key = (r['suite'], r['name'])
        t_f = {k: v[key]['adder_fwd_ms'] for k, v in forced.items()}
        t_b = {k: v[key]['adder_fwdbwd_ms'] - t_f[k]
               for k, v in forced.items()}
        kf, kb = min(t_f, key=t_f.get), min(t_b, key=t_b.get)
        cf, cfb = r['conv_fwd_ms'], r['conv_fwdbwd_ms']
        for k in forced:
            fwd.setdefault(k, []).append(t_f[k] / cf)
            fb.setdefault(k, []).append((t_f[k] + t_b[k]) / cfb)
        fwd['auto'].append(r['adder_fwd_ms'] / cf)
        fb['auto'].append(r['adder_fwdbwd_ms'] / cfb)
        fwd['best'].append(t_f[kf] / cf)
        fb['best'].append((t_f[kf] + t_b[kb]) / cfb)
        auto_b = r['adder_fwdbwd_ms'] - r['adder_fwd_ms']
        rows.append(
            f"| {r['suite']} | {r['name']} | {r['N']},{r['C']},{r['H']}x"
            f"{r['W']} -> {r['O']}, {r['k']}/{r['stride']} | "
            + ' | '.join(f'{t_f[k]:.3f}' for k in forced)
            + f' | {kf} | {r["adder_fwd_ms"] / t_f[kf]:.2f} | '
            + ' | '.join(f'{t_b[k]:.3f}' for k in forced)
            + f' | {kb} | {auto_b / t_b[kb]:.2f} |')
    head = ' | '.join(f'tile {k}' for k in forced)
    lines = [f'tile choice over {len(layers)} layers (adder/cuDNN median / '
             'max; cuDNN from benchmark.json)']
    for name in ['auto'] + list(forced) + ['best']:
        label = {'auto': 'automatic', 'best': 'best per layer'}.get(
            name, f'tile {name} everywhere')
        lines.append(f'- {label}: forward {_median_max(fwd[name])}, '
                     f'forward+backward {_median_max(fb[name])}')
    lines += ['', 'forward ms per forced tile, the fastest, automatic / '
              'fastest; backward (f+b - fwd) ms likewise', '',
              f'| suite | layer | N,C,HxW -> O, k/s | {head} | fwd best | '
              f'auto/best | {head} | bwd best | auto/best |',
              '|' + '---|' * (5 + 2 * len(forced) + 2)] + rows
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', help='the folder gpu_check.sh wrote')
    parser.add_argument('--tiles', action='store_true',
                        help='the tile-choice report instead of the targets')
    args = parser.parse_args(argv)
    if not os.path.isdir(args.out):
        print(f'speed_targets.py: no folder {args.out}', file=sys.stderr)
        return 2
    report = tile_report if args.tiles else check_targets
    print('\n'.join(report(args.out)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
