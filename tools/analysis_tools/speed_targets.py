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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', help='the folder gpu_check.sh wrote')
    args = parser.parse_args(argv)
    if not os.path.isdir(args.out):
        print(f'speed_targets.py: no folder {args.out}', file=sys.stderr)
        return 2
    print('\n'.join(check_targets(args.out)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
