"""Train configs with several seeds and report mean and spread.

    python tools/analysis_tools/seeds.py configs/adder_r20_digits.py \\
        configs/cnn_r20_digits.py --seeds 0 1 2 [--markdown FILE.md]

Runs tools/train.py once per config and seed (``randomness.seed``), each in
its own work dir (default work_dirs/seeds/<config>/seed<S>), reads the final
validation top-1 and the training time each run prints, and prints per-seed
results, mean and sample standard deviation per config, with the machine
(CPU model and instruction set, torch) and the date. ``--markdown FILE``
writes that table into FILE's section ``--section`` (README.md, docs/...),
``--out`` the results as JSON (read by model_zoo.py).
"""
import argparse
import json
import os.path as osp
import re
import statistics
import subprocess
import sys
import time

from adder_mm.apis import check_markdown_path, check_out_path
from adder_mm.utils import write_atomic
from adder_mm.utils.machine import describe, machine_info
from adder_mm.utils.markdown import write_section

TRAIN = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'train.py')
FINAL = re.compile(r'final validation \(epoch (\d+)\): (.*?); training took '
                   r'(\d+) s')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+', help='config files')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--metric', default='accuracy/top1')
    parser.add_argument('--work-dir', default=osp.join('work_dirs', 'seeds'))
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='passed to every run (key=value)')
    parser.add_argument('--out', help='write results as JSON')
    parser.add_argument('--markdown', help='write the table into this '
                        'markdown file (its section --section)')
    parser.add_argument('--section', default='seeds',
                        help='name of the table\'s section in --markdown')
    args = parser.parse_args(argv)
    for cfg in args.configs:
        if not osp.isfile(cfg):
            parser.error(f'config file not found: {cfg!r}')
    if len(set(args.seeds)) != len(args.seeds):
        parser.error('--seeds: each seed once')
    if any(o.split('=')[0].lstrip('+') == 'randomness.seed'
           for o in args.cfg_options):
        parser.error('--cfg-options randomness.seed=... would replace every '
                     'seed of --seeds (each run sets it); use --seeds')
    # Checked now, not after the training runs.
    check_out_path(parser, args.out)
    check_markdown_path(parser, args.markdown, args.section)
    return args


def run(config, seed, args):
    name = osp.splitext(osp.basename(config))[0]
    work = osp.join(args.work_dir, name, f'seed{seed}')
    cmd = [sys.executable, TRAIN, config, '--work-dir', work,
           '--cfg-options', f'randomness.seed={seed}'] + args.cfg_options
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = FINAL.findall(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise SystemExit(f'seeds.py: {name} seed {seed} failed (exit '
                         f'{proc.returncode}):\n{tail}')
    epoch, metrics, train_s = found[-1]
    values = dict(kv.split(': ') for kv in metrics.split(', '))
    if args.metric not in values:
        raise SystemExit(f'seeds.py: {name} reported {sorted(values)}, no '
                         f'{args.metric}')
    return dict(config=config, seed=seed, epochs=int(epoch),
                value=float(values[args.metric]), train_s=int(train_s),
                wall_s=round(wall, 1))


def summarise(rows):
    vals = [r['value'] for r in rows]
    times = [r['train_s'] for r in rows]
    return dict(mean=statistics.mean(vals),
                std=statistics.stdev(vals) if len(vals) > 1 else 0.,
                min=min(vals), max=max(vals),
                train_s_median=statistics.median(times))


def markdown(results, env, metric):
    lines = [f'{metric}, final validation; {describe(env)}; written by '
             'tools/analysis_tools/seeds.py.', '',
             '| config | epochs | seeds | per seed | mean +- std | '
             'training time (median) |', '|---|---|---|---|---|---|']
    for config, rows in results.items():
        s = summarise(rows)
        seeds = ', '.join(str(r['seed']) for r in rows)
        values = ' / '.join(f'{r["value"]:.2f}' for r in rows)
        lines.append(
            f'| {osp.basename(config)} | {rows[0]["epochs"]} | {seeds} | '
            f'{values} | {s["mean"]:.2f} +- {s["std"]:.2f} | '
            f'{s["train_s_median"]} s |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    env = machine_info()
    print(f'# {env}')
    results = {}
    for config in args.configs:
        rows = results[config] = []
        for seed in args.seeds:
            r = run(config, seed, args)
            rows.append(r)
            print(f'{osp.basename(config)} seed {seed}: {args.metric} '
                  f'{r["value"]:.2f} after {r["epochs"]} epochs, trained in '
                  f'{r["train_s"]} s', flush=True)
        s = summarise(rows)
        print(f'{osp.basename(config)}: {s["mean"]:.2f} +- {s["std"]:.2f} '
              f'(min {s["min"]:.2f}, max {s["max"]:.2f}, n={len(rows)})')
    table = markdown(results, env, args.metric)
    print('\n' + table)
    if args.markdown:
        write_section(args.markdown, args.section, table)
    if args.out:
        def write(tmp):
            with open(tmp, 'w') as f:
                json.dump(dict(env=env, results=results), f, indent=1)
        write_atomic(args.out, write)
    return results


if __name__ == '__main__':
    main()
