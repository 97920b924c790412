"""Top-1 of post-training quantization over bits, methods and seeds.

    python tools/analysis_tools/quant_sweep.py configs/adder_r20_digits.py \\
        --cnn configs/cnn_r20_digits.py --seeds-dir work_dirs/seeds \\
        --bits 8 6 4 --methods shared grouped [--markdown README.md]

For every seed's checkpoint of tools/analysis_tools/seeds.py (the latest in
<seeds-dir>/<config name>/seed<S>/), runs tools/quantize.py with each bit
width and method (with bias correction, and INT8 shared without it: the
literature's baseline) and reads the float and quantized top-1 it prints; with
``--cnn``, the CNN twin's checkpoints get PyTorch's own INT8 post-training
quantization (torch.ao, x86 engine) as the reference point. Prints and (with
``--markdown FILE``) writes one table of means +- std over the seeds into
FILE's section ``--section``, with the machine and the date.
"""
import argparse
import os.path as osp
import re
import statistics
import subprocess
import sys

from adder_mm.utils.machine import describe
from adder_mm.utils.markdown import check_section, write_section

_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

QUANTIZE = osp.join(_ROOT, 'tools', 'quantize.py')
NO_BC = 'INT8 shared, no bias correction'
RESULT = re.compile(r'top-1 float ([\d.]+), quantized ([\d.]+)')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the AdderNet config')
    parser.add_argument('--cnn', help='its CNN twin (torch.ao INT8 row)')
    parser.add_argument('--seeds-dir', default=osp.join('work_dirs',
                                                        'seeds'))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--bits', type=int, nargs='+', default=[8, 6, 4])
    parser.add_argument('--methods', nargs='+', default=['shared',
                                                         'grouped'])
    parser.add_argument('--calib-batches', type=int, default=8)
    parser.add_argument('--markdown', help='write the table into this file')
    parser.add_argument('--section', default='quant-accuracy')
    return parser.parse_args(argv)


def checkpoint(seeds_dir, config, seed):
    """The latest checkpoint of a seeds.py run (its last_checkpoint)."""
    name = osp.splitext(osp.basename(config))[0]
    pointer = osp.join(seeds_dir, name, f'seed{seed}', 'last_checkpoint')
    if not osp.isfile(pointer):
        sys.exit(f'quant_sweep.py: no trained checkpoint for {name} seed '
                 f'{seed} ({pointer} missing); run tools/analysis_tools/'
                 f'seeds.py {config} --work-dir {seeds_dir} first')
    with open(pointer) as f:
        return f.read().strip()


def quantize(config, ckpt, method, bits, calib, bias_correction=True):
    proc = subprocess.run(
        [sys.executable, QUANTIZE, config, ckpt, '--method', method,
         '--bits', str(bits), '--calib-batches', str(calib), '--work-dir',
         osp.join(osp.dirname(ckpt), 'quant')] +
        ([] if bias_correction else ['--no-bias-correction']),
        capture_output=True, text=True)
    found = RESULT.search(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not found:
        sys.exit(f'quant_sweep.py: quantize.py {method} {bits}-bit on {ckpt} '
                 f'failed:\n{(proc.stderr or proc.stdout)[-2000:]}')
    return float(found.group(1)), float(found.group(2))


def mean_std(values):
    if not values:
        return '-'
    std = statistics.stdev(values) if len(values) > 1 else 0.
    return f'{statistics.mean(values):.2f} +- {std:.2f}'


def main(argv=None):
    args = parse_args(argv)
    # What would stop the sweep at its end or midway, checked first.
    if args.markdown:
        try:
            check_section(args.markdown, args.section)
        except ValueError as e:
            sys.exit(f'quant_sweep.py: --markdown {e}')
    for seed in args.seeds:
        for config in filter(None, (args.config, args.cnn)):
            checkpoint(args.seeds_dir, config, seed)
    rows = {}  # label -> {'adder': [...], 'cnn': [...]}
    for seed in args.seeds:
        ckpt = checkpoint(args.seeds_dir, args.config, seed)
        for method in args.methods:
            for bits in args.bits:
                fl, q = quantize(args.config, ckpt, method, bits,
                                 args.calib_batches)
                rows.setdefault('float32', {}).setdefault(
                    'adder', {})[seed] = fl
                rows.setdefault(f'INT{bits} {method}', {}).setdefault(
                    'adder', {})[seed] = q
                print(f'seed {seed} {method} {bits}-bit: float {fl:.2f} '
                      f'quantized {q:.2f}', flush=True)
        # The literature's baseline: one grid per layer, no correction.
        _, q = quantize(args.config, ckpt, 'shared', 8, args.calib_batches,
                        bias_correction=False)
        rows.setdefault(NO_BC, {}).setdefault('adder', {})[seed] = q
        if args.cnn:
            ckpt = checkpoint(args.seeds_dir, args.cnn, seed)
            fl, q = quantize(args.cnn, ckpt, 'torch-ao', 8,
                             args.calib_batches)
            rows.setdefault('float32', {}).setdefault('cnn', {})[seed] = fl
            rows.setdefault('INT8 torch.ao (x86)', {}).setdefault(
                'cnn', {})[seed] = q
            print(f'seed {seed} CNN torch.ao INT8: float {fl:.2f} '
                  f'quantized {q:.2f}', flush=True)
    order = ['float32', NO_BC] + [f'INT{b} {m}' for b in args.bits
                                  for m in args.methods] + \
        ['INT8 torch.ao (x86)']
    lines = [f'top-1 (%), mean +- std over seeds {args.seeds}, '
             f'{args.calib_batches} calibration batches of training images; '
             f'{describe()}; written by tools/analysis_tools/quant_sweep.py.',
             '',
             f'| weights and inputs | {osp.basename(args.config)} | ' +
             (f'{osp.basename(args.cnn)} |' if args.cnn else ''),
             '|---|---|' + ('---|' if args.cnn else '')]
    for label in order:
        if label not in rows:
            continue
        cells = [mean_std(list(rows[label].get('adder', {}).values()))]
        if args.cnn:
            cells.append(mean_std(list(rows[label].get('cnn', {}).values())))
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    table = '\n'.join(lines)
    print('\n' + table)
    if args.markdown:
        write_section(args.markdown, args.section, table)
    return rows


if __name__ == '__main__':
    main()
