"""Top-1 of quantization over bits, methods and seeds.

    python tools/analysis_tools/quant_sweep.py configs/adder_r20_digits.py \\
        --cnn configs/cnn_r20_digits.py --seeds-dir work_dirs/seeds \\
        --bits 8 6 4 --methods shared grouped \\
        --qat configs/adder_r20_digits_int4_qat.py [--markdown README.md]

For every seed's checkpoint of tools/analysis_tools/seeds.py (the latest in
<seeds-dir>/<config name>/seed<S>/), runs tools/quantize.py with each bit
width and method (with bias correction, and INT8 shared without it: the
literature's baseline) and reads the float and quantized top-1 it prints; with
``--cnn``, the CNN twin's checkpoints get PyTorch's own INT8 post-training
quantization (torch.ao, x86 engine) as the reference point; with ``--qat
CONFIG``, each seed's checkpoint is fine-tuned by tools/train.py with that
quantization-aware config (same seed; in <seeds-dir>/<its name>/seed<S>/)
and converted to integers by tools/quantize.py. Prints and (with
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
TRAIN = osp.join(_ROOT, 'tools', 'train.py')
NO_BC = 'INT8 shared, no bias correction'
RESULT = re.compile(r'top-1 float ([\d.]+), quantized ([\d.]+)')
BITS = re.compile(r', (\d)-bit, ')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the AdderNet config')
    parser.add_argument('--cnn', help='its CNN twin (torch.ao INT8 row)')
    parser.add_argument('--qat', nargs='+', default=[],
                        help='quantization-aware configs that fine-tune '
                        'the float checkpoints (one row each)')
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


def quantize(config, ckpt, method, bits, calib, bias_correction=True,
             with_bits=False):
    """(float, quantized) top-1 of quantize.py (and the bits it used);
    ``bits`` None: those of a QAT model."""
    proc = subprocess.run(
        [sys.executable, QUANTIZE, config, ckpt, '--method', method,
         '--calib-batches', str(calib), '--work-dir',
         osp.join(osp.dirname(ckpt), 'quant')] +
        ([] if bits is None else ['--bits', str(bits)]) +
        ([] if bias_correction else ['--no-bias-correction']),
        capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    found, used = RESULT.search(log), BITS.search(log)
    if proc.returncode != 0 or not found or not used:
        sys.exit(f'quant_sweep.py: quantize.py {method} {bits or ""}-bit on '
                 f'{ckpt} failed:\n{(proc.stderr or proc.stdout)[-2000:]}')
    scores = float(found.group(1)), float(found.group(2))
    return scores + (int(used.group(1)), ) if with_bits else scores


def fine_tune(qat_config, seeds_dir, float_ckpt, seed):
    """Quantization-aware fine-tuning of one seed's float checkpoint;
    returns the last checkpoint."""
    name = osp.splitext(osp.basename(qat_config))[0]
    work = osp.join(seeds_dir, name, f'seed{seed}')
    proc = subprocess.run(
        [sys.executable, TRAIN, qat_config, '--work-dir', work,
         '--cfg-options', f'load_from={float_ckpt}',
         f'randomness.seed={seed}'], capture_output=True, text=True)
    pointer = osp.join(work, 'last_checkpoint')
    if proc.returncode != 0 or not osp.isfile(pointer):
        sys.exit(f'quant_sweep.py: train.py {qat_config} from {float_ckpt} '
                 f'failed:\n{(proc.stderr or proc.stdout)[-2000:]}')
    with open(pointer) as f:
        return f.read().strip()


def qat_label(config, bits):
    from mmengine.config import Config
    epochs = Config.fromfile(config).train_cfg.get('max_epochs')
    return f'INT{bits} shared, QAT {epochs} epochs ({osp.basename(config)})'


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
    for config in args.qat:
        if not osp.isfile(config):
            sys.exit(f'quant_sweep.py: --qat {config}: no such file')
    for seed in args.seeds:
        for config in filter(None, (args.config, args.cnn)):
            checkpoint(args.seeds_dir, config, seed)
    qat_rows = []
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
        for config in args.qat:
            tuned = fine_tune(config, args.seeds_dir, ckpt, seed)
            _, q, bits = quantize(config, tuned, 'shared', None,
                                  args.calib_batches, with_bits=True)
            label = qat_label(config, bits)
            if label not in qat_rows:
                qat_rows.append(label)
            rows.setdefault(label, {}).setdefault('adder', {})[seed] = q
            print(f'seed {seed} {label}: quantized {q:.2f}', flush=True)
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
                                  for m in args.methods] + qat_rows + \
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
