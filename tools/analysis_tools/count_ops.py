"""Count multiplications, additions and energy of one forward pass of a config.

    python tools/analysis_tools/count_ops.py CONFIG [--shape H W]
        [--compare OTHER_CONFIG] [--bits {fp32,fp16,int32,int8}]
        [--energy TABLE.json] [--quantized Q.pth] [--work-dir DIR]
        [--out [FILE.json]] [--plot [FILE.png]] [--markdown [FILE.md]]

Builds the model of CONFIG, runs one forward pass on a [1, C, H, W] input
with hooks on every AdderConv2d, convolution and Linear layer (backbone, neck
and head), prints a per-layer table and totals, the estimated energy (45 nm
figures of Horowitz, ISSCC 2014, or --energy) and, with --compare, the saving
against the other config (usually the CNN twin). Conventions: see
adder_mm/utils/op_counter.py. ``--out`` and ``--plot`` without a file name
write ops.json / ops.png into the work dir (default
work_dirs/count_ops/<config name>), never into the current folder.
``--quantized Q.pth`` (a checkpoint of tools/quantize.py) also counts the
quantized model, whose integer ops are priced at their own precision
(int8 subtractions, int32 accumulations), next to the float model and
``--compare``; ``--markdown`` writes that energy table.
"""
import argparse
import copy
import json
import os
import os.path as osp
import warnings

import torch
from mmengine.config import DictAction

from adder_mm.utils.op_counter import (CONVENTION, _energy_pj, count_ops,
                                       load_energy_table)

# Transforms whose size argument fixes the network input, and that argument.
_SIZE_TRANSFORMS = {
    'CenterCrop': 'crop_size',
    'RandomCrop': 'crop_size',
    'RandomResizedCrop': 'scale',
    'Resize': 'scale',
    'ResizeEdge': None,  # keeps the aspect ratio: no fixed size
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Count multiplications, additions and energy per layer')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--shape', type=int, nargs='+', default=None,
        help='input H W (or one size for both); default: from the '
        'config pipeline, else 224')
    parser.add_argument(
        '--channels', type=int, default=None,
        help='input channels; default: from data_preprocessor mean, else 3')
    parser.add_argument('--compare', default=None,
                        help='second config (e.g. the CNN twin)')
    parser.add_argument('--bits', default='fp32',
                        help='energy table row: fp32, fp16, int32, int8 '
                        '(or a row added by --energy)')
    parser.add_argument('--energy', default=None,
                        help='JSON {bits: {"add": pJ, "mult": pJ}} '
                        'overriding/extending the 45 nm table')
    parser.add_argument(
        '--quantized', default=None,
        help='a quantized checkpoint of CONFIG (tools/quantize.py): count '
        'the quantized model too')
    parser.add_argument('--markdown', nargs='?', const='', default=None,
                        help='write the energy table as markdown (default: '
                        '<work-dir>/energy.md)')
    parser.add_argument(
        '--work-dir', default=None,
        help='where --out/--plot without a file name write (default '
        'work_dirs/count_ops/<config name>)')
    parser.add_argument('--out', nargs='?', const='', default=None,
                        help='write JSON (default: <work-dir>/ops.json)')
    parser.add_argument('--plot', nargs='?', const='', default=None,
                        help='write a bar chart PNG of mults/adds per stage '
                        '(default: <work-dir>/ops.png)')
    parser.add_argument('--group-depth', type=int, default=2,
                        help='name parts that make a stage (default 2: '
                        'backbone.layer1)')
    parser.add_argument(
        '--device', default='meta', choices=['meta', 'cpu', 'cuda'],
        help='device of the forward pass; meta (default) computes shapes '
        'only, which is all the counts need, and falls back to cpu when the '
        'model cannot run on meta tensors')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, default=None,
        help='override config entries of both configs, e.g. '
        'model.backbone.style=caffe')
    parser.add_argument('--per-layer', action=argparse.BooleanOptionalAction,
                        default=True, help='print the per-layer table')
    args = parser.parse_args(argv)
    work_dir = args.work_dir or osp.join(
        'work_dirs', 'count_ops', osp.splitext(osp.basename(args.config))[0])
    if args.out == '':
        args.out = osp.join(work_dir, 'ops.json')
    if args.plot == '':
        args.plot = osp.join(work_dir, 'ops.png')
    if args.markdown == '':
        args.markdown = osp.join(work_dir, 'energy.md')
    if args.shape is not None:
        if len(args.shape) == 1:
            args.shape = args.shape * 2
        if len(args.shape) != 2 or min(args.shape) < 1:
            parser.error(f'--shape takes H W (or one size), positive, got '
                         f'{args.shape}')
    if args.channels is not None and args.channels < 1:
        parser.error(f'--channels must be positive, got {args.channels}')
    for flag, path in (('config', args.config), ('--compare', args.compare),
                       ('--energy', args.energy),
                       ('--quantized', args.quantized)):
        if path is not None and not osp.isfile(path):
            parser.error(f'{flag}: no such file {path!r}')
    try:
        args.table = load_energy_table(args.energy)
    except ValueError as e:
        parser.error(str(e))
    if args.bits not in args.table:
        parser.error(f'--bits {args.bits!r} not in the energy table '
                     f'{sorted(args.table)}')
    return args


def load_model(config, cfg_options=None):
    """(model, cfg) built from a config file, no weights loaded."""
    import adder_mm  # noqa: F401  (registers AdderConv2d, backbones, heads)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'model' not in cfg:
        raise ValueError(f'{config}: the config has no `model`')
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.eval()
    return model, cfg


def _pipeline_size(pipeline):
    """(H, W) set by the last sizing transform of a pipeline, or None."""
    size = None
    for t in pipeline or []:
        key = _SIZE_TRANSFORMS.get(t.get('type'), 'absent')
        if key == 'absent':
            continue
        val = t.get(key) if key else None
        if val is None:
            size = None
            continue
        if isinstance(val, int):
            size = (val, val)
        elif len(val) == 2:
            # mmcv scales are (w, h), crop sizes (h, w); CNN inputs are square
            # in every config of this project, so the order does not matter.
            size = (int(val[1]), int(val[0])) if key == 'scale' else (
                int(val[0]), int(val[1]))
    return size


def infer_shape(cfg):
    """(H, W, source) of the network input from the config pipelines."""
    for split in ('test', 'val', 'train'):
        loader = cfg.get(f'{split}_dataloader') or {}
        pipeline = (loader.get('dataset') or {}).get('pipeline')
        if pipeline is None:
            pipeline = cfg.get(f'{split}_pipeline')
        size = _pipeline_size(pipeline)
        if size is not None:
            return size[0], size[1], f'{split} pipeline'
    return 224, 224, 'default (no sizing transform in the config)'


def infer_channels(cfg):
    for holder in (cfg.get('data_preprocessor'),
                   cfg.model.get('data_preprocessor')):
        mean = (holder or {}).get('mean')
        if mean is not None:
            return len(mean)
    return 3


def run_count(model, shape, channels, device):
    """Count one forward pass of a [1, C, H, W] zero input on ``device``."""
    from mmengine.model import BaseModel

    def forward(x):
        if isinstance(model, BaseModel):
            return model(x, mode='tensor')
        return model(x)

    model.to(device)
    x = torch.zeros(1, channels, *shape, device=device)
    with torch.no_grad(), warnings.catch_warnings():
        # adder2d warns that meta tensors take its reference path.
        warnings.simplefilter('ignore', RuntimeWarning)
        return count_ops(model, x, forward=forward)


def quantize_structure(model, path):
    """Load a quantized checkpoint of tools/quantize.py into ``model``
    (its adder layers become the checkpoint's QuantAdderConv2d)."""
    from adder_mm.apis import check_checkpoint
    ckpt, _ = check_checkpoint(path, model, strict=True,
                               what='--quantized checkpoint',
                               quantized='require')
    model.load_state_dict(ckpt['state_dict'], strict=True)
    return ckpt['meta']['quantization']


def count_config(config, shape=None, channels=None, device='meta',
                 cfg_options=None, quantized=None):
    """Count a config (with ``quantized``: its quantized checkpoint);
    returns a dict with the ModelOps and its input."""
    model, cfg = load_model(config, cfg_options)
    spec = None
    if quantized:
        spec = quantize_structure(model, quantized)
        device = 'cpu'  # the integer layers read their grids
    if shape is None:
        h, w, src = infer_shape(cfg)
    else:
        (h, w), src = shape, '--shape'
    c = infer_channels(cfg) if channels is None else channels
    dev = device
    try:
        ops = run_count(model, (h, w), c, dev)
    except (RuntimeError, NotImplementedError, TypeError) as e:
        if dev != 'meta':
            raise
        # Data-dependent code cannot run on meta tensors; the weights were
        # moved away, so rebuild on the CPU.
        print(f'[{config}] cannot run on meta tensors ({e}); using cpu')
        model, _ = load_model(config, cfg_options)
        dev = 'cpu'
        ops = run_count(model, (h, w), c, dev)
    name = config if spec is None else (
        f'{config} [{spec["method"]} {spec["bits"]}-bit]')
    return dict(config=name, input_shape=[1, c, h, w], shape_source=src,
                device=dev, ops=ops, quantization=spec)


def fmt(n):
    """41170000 -> '41.17M'."""
    n = float(n)
    for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(n) >= scale:
            return f'{n / scale:.2f}{unit}'
    return f'{n:.0f}'


def fmt_energy(pj):
    for unit, scale in (('mJ', 1e9), ('uJ', 1e6), ('nJ', 1e3)):
        if abs(pj) >= scale:
            return f'{pj / scale:.2f} {unit}'
    return f'{pj:.2f} pJ'


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows)
              for i in range(len(header))]
    line = lambda r: '  '.join(  # noqa: E731
        str(v).ljust(w) if i == 0 else str(v).rjust(w)
        for i, (v, w) in enumerate(zip(r, widths)))
    return '\n'.join([line(header), '-' * len(line(header))] +
                     [line(r) for r in rows])


def report(result, bits, table, group_depth, per_layer=True):
    """Printable text for one counted config."""
    ops = result['ops']
    e = table[bits]
    out = [f'== {result["config"]}  input {tuple(result["input_shape"])} '
           f'({result["shape_source"]}, forward on {result["device"]})']
    if per_layer:
        rows = []
        for layer in ops.layers:
            c = layer.counts()
            rows.append([
                layer.name, layer.kind,
                'x'.join(map(str, layer.output_shape[1:])), layer.terms,
                fmt(c['mults']), fmt(c['adds']), fmt(c['abs_ops']),
                fmt_energy(_energy_pj(c, bits, table))
            ])
        out.append(_table(['layer', 'kind', 'output', 'K', 'mults', 'adds',
                           'abs', f'energy {bits}'], rows))
    rows = []
    for key, c in ops.by_group(group_depth).items():
        energy = _energy_pj(c, bits, table)
        rows.append([key, fmt(c['mults']), fmt(c['adds']), fmt(c['abs_ops']),
                     fmt_energy(energy)])
    t = ops.totals()
    rows.append(['TOTAL', fmt(t['mults']), fmt(t['adds']), fmt(t['abs_ops']),
                 fmt_energy(ops.energy_pj(bits, table))])
    out.append(_table(['stage', 'mults', 'adds', 'abs', f'energy {bits}'],
                      rows))
    kinds = ', '.join(f'{k}: {fmt(v["mults"])} mults + {fmt(v["adds"])} adds'
                      for k, v in ops.totals_by_kind().items())
    n_layers = {}
    for layer in ops.layers:
        n_layers[layer.kind] = n_layers.get(layer.kind, 0) + 1
    out.append(f'counted layers: {n_layers} ({kinds}); bias adds '
               f'{fmt(t["bias_adds"])} (in adds)')
    out.append('not counted (ran, excluded): ' + (', '.join(
        f'{k} x{v}' for k, v in sorted(ops.uncounted.items())) or 'none'))
    return '\n'.join(out)


def energy_table(results, bits, table):
    """Markdown: mults, adds and energy of each counted model, and its
    saving against the last one (the CNN twin with --compare)."""
    last = results[-1]['ops'].energy_pj(bits, table)
    lines = ['| model | mults | adds | energy | vs ' +
             osp.basename(results[-1]['config']) + ' |', '|---|---|---|---|---|']
    for r in results:
        t, e = r['ops'].totals(), r['ops'].energy_pj(bits, table)
        lines.append(f'| {osp.basename(r["config"])} | {fmt(t["mults"])} | '
                     f'{fmt(t["adds"])} | {fmt_energy(e)} | '
                     f'{last / e:.2f}x less |' if e else '| - |')
    return '\n'.join(lines)


def compare(a, b, bits, table):
    """Saving of config a against config b (usually AdderNet vs CNN)."""
    ta, tb = a['ops'].totals(), b['ops'].totals()
    ea, eb = a['ops'].energy_pj(bits, table), b['ops'].energy_pj(bits, table)
    return dict(
        config=a['config'], against=b['config'], bits=bits,
        mults=ta['mults'], mults_other=tb['mults'],
        adds=ta['adds'], adds_other=tb['adds'],
        energy_pj=ea, energy_pj_other=eb,
        energy_saving=(1 - ea / eb) if eb else None,
        energy_ratio=(eb / ea) if ea else None,
        mults_removed=tb['mults'] - ta['mults'])


def plot(results, path, group_depth):
    """Grouped bars: mults and adds per stage, per config."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = []
    for r in results:
        for k in r['ops'].by_group(group_depth):
            if k not in keys:
                keys.append(k)
    series = []
    for r in results:
        groups = r['ops'].by_group(group_depth)
        name = osp.splitext(osp.basename(r['config']))[0]
        for field in ('mults', 'adds'):
            series.append((f'{name} {field}',
                           [groups.get(k, {}).get(field, 0) / 1e6
                            for k in keys]))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) + 2), 4))
    width = 0.8 / len(series)
    for i, (label, vals) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width
              for j in range(len(keys))]
        ax.bar(xs, vals, width, label=label)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=30, ha='right')
    ax.set_ylabel('operations (millions)')
    ax.set_title(f'multiplications vs additions per stage, input '
                 f'{tuple(results[0]["input_shape"][2:])}')
    ax.legend(fontsize='small')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    results = [count_config(args.config, args.shape, args.channels,
                            args.device, args.cfg_options)]
    if args.quantized:
        results.insert(0, count_config(
            args.config, tuple(results[0]['input_shape'][2:]),
            results[0]['input_shape'][1], 'cpu', args.cfg_options,
            quantized=args.quantized))
    if args.compare:
        # Same input as the first model, so the two counts are comparable.
        shape = tuple(results[0]['input_shape'][2:])
        results.append(count_config(args.compare, shape,
                                    results[0]['input_shape'][1],
                                    args.device, args.cfg_options))
    for r in results:
        print(report(r, args.bits, args.table, args.group_depth,
                     args.per_layer))
        print()
    e = args.table[args.bits]
    print(f'energy per op ({args.bits}): add {e["add"]} pJ, mult '
          f'{e["mult"]} pJ; abs (sign bit) not counted as energy')
    print(f'convention: {CONVENTION}')
    summary = None
    if len(results) > 2 or args.markdown:
        text = energy_table(results, args.bits, args.table)
        print('\n' + text)
        if args.markdown:
            os.makedirs(osp.dirname(osp.abspath(args.markdown)),
                        exist_ok=True)
            with open(args.markdown, 'w') as f:
                f.write(f'Energy of one forward pass at 45 nm (Horowitz, '
                        f'ISSCC 2014; float layers at {args.bits}), written '
                        f'by tools/analysis_tools/count_ops.py.\n\n{text}\n')
            print(f'wrote {args.markdown}')
    if args.compare:
        summary = compare(results[-2], results[-1], args.bits, args.table)
        print(f'\n{results[-2]["config"]} vs {results[-1]["config"]} '
              f'({args.bits}): mults {fmt(summary["mults"])} vs '
              f'{fmt(summary["mults_other"])}, adds {fmt(summary["adds"])} '
              f'vs {fmt(summary["adds_other"])}, energy '
              f'{fmt_energy(summary["energy_pj"])} vs '
              f'{fmt_energy(summary["energy_pj_other"])}: saving '
              f'{100 * summary["energy_saving"]:.1f}% '
              f'({summary["energy_ratio"]:.2f}x less)')
    if args.out:
        doc = dict(
            bits=args.bits, energy_table_pj=args.table,
            models=[dict(config=r['config'], input_shape=r['input_shape'],
                         shape_source=r['shape_source'], device=r['device'],
                         **r['ops'].to_dict(args.bits, args.table,
                                            args.group_depth))
                    for r in results],
            comparison=summary)
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(doc, f, indent=2)
        print(f'wrote {args.out}')
    if args.plot:
        os.makedirs(osp.dirname(osp.abspath(args.plot)), exist_ok=True)
        plot(results, args.plot, args.group_depth)
        print(f'wrote {args.plot}')
    return results, summary


if __name__ == '__main__':
    main()
