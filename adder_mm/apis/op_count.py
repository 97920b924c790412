"""Operation counting of whole configs (the library of
tools/analysis_tools/count_ops.py and model_zoo.py): build a config's model,
infer its input from the pipelines, count one forward pass (adder_mm.utils.
op_counter), and format the results."""
import copy
import os
import os.path as osp
import warnings

import torch

from adder_mm.analysis.op_counter import (
    _counted_modules,
    _energy_pj,
    _first_tensor,
    count_ops,
)

from .errors import ToolError
from .runner import apply_cfg_options, load_config

# Transforms whose size argument fixes the network input, and that argument.
_SIZE_TRANSFORMS = {
    'CenterCrop': 'crop_size',
    'RandomCrop': 'crop_size',
    'RandomResizedCrop': 'scale',
    'Resize': 'scale',
    'ResizeEdge': None,  # keeps the aspect ratio: no fixed size
}


def load_model(config, cfg_options=None):
    """(model, cfg) built from a config file, no weights loaded; a broken
    config, a misspelt ``cfg_options`` key or a config without a model is
    a ToolError."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import adder_mm  # noqa: F401  (registers AdderConv2d, backbones, heads)
    cfg = apply_cfg_options(load_config(config), cfg_options)
    if 'model' not in cfg:
        raise ToolError(f'{config}: the config has no `model`')
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    try:
        model = MODELS.build(copy.deepcopy(cfg.model))
    except (KeyError, TypeError, ValueError, AssertionError,
            AttributeError) as e:
        # An unknown type name, a missing `type`, a bad argument value.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ToolError(f'{config}: the model cannot be built: '
                        f'{type(e).__name__}: {msg}') from None
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


class _ChannelMismatch(Exception):
    """The first layer of the forward pass takes other input channels than
    the input has: (layer name, layer class, its channels, the input's)."""


def _channel_check(model):
    """Forward pre-hooks that stop the pass before its first counted layer
    runs when it is a 2-D convolution (or adder layer) whose in_channels
    differ from its input's: that forward pass would fail there anyway, so
    it fails before anything is counted or a CPU fallback allocates the
    input. Returns the hook handles."""
    counted = _counted_modules(model)
    names = {id(m): n for n, m in counted}
    seen = []

    def pre_hook(mod, args):
        if seen:
            return
        seen.append(mod)
        x = _first_tensor(args)
        want = getattr(mod, 'in_channels', None)
        if want is not None and x is not None and x.dim() == 4 and \
                x.shape[1] != want:
            raise _ChannelMismatch(names[id(mod)], type(mod).__name__, want,
                                   x.shape[1])

    return [m.register_forward_pre_hook(pre_hook) for _, m in counted]


def run_count(model, shape, channels, device):
    """Count one forward pass of a [1, C, H, W] zero input on ``device``."""
    from mmengine.model import BaseModel

    def forward(x):
        if isinstance(model, BaseModel):
            return model(x, mode='tensor')
        return model(x)

    model.to(device)
    x = torch.zeros(1, channels, *shape, device=device)
    handles = _channel_check(model)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Without the compiled extension adder2d warns that it takes
            # the reference path (meta tensors included).
            warnings.simplefilter('ignore', RuntimeWarning)
            return count_ops(model, x, forward=forward)
    finally:
        for h in handles:
            h.remove()


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
                 cfg_options=None, quantized=None, channels_from=None):
    """Count a config (with ``quantized``: its quantized checkpoint);
    returns a dict with the ModelOps and its input.

    Input channels that the model's first layer does not take, and a
    forward pass that fails on the CPU (an input too large to allocate, or
    too small for the model), are a ToolError; ``channels_from`` names
    where ``channels`` came from in that message (default: --channels).
    """
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
        try:
            ops = run_count(model, (h, w), c, dev)
        except (RuntimeError, NotImplementedError, TypeError) as e:
            if dev != 'meta':
                raise
            # Data-dependent code cannot run on meta tensors; the weights
            # were moved away, so rebuild on the CPU.
            print(f'[{config}] cannot run on meta tensors ({e}); using cpu')
            model, _ = load_model(config, cfg_options)
            dev = 'cpu'
            ops = run_count(model, (h, w), c, dev)
    except _ChannelMismatch as e:
        name, cls, want, got = e.args
        if channels is None:
            fix = f'{got} inferred from the config; give --channels {want}'
        else:
            fix = (f'{channels_from or "--channels"}; to count a model '
                   f'with {got} input channels, change its first layer, '
                   f'e.g. --cfg-options model.backbone.in_channels={got}')
        raise ToolError(
            f'{config}: the model takes {want} input channels (its first '
            f'layer {name} is a {cls} with in_channels={want}), not {got} '
            f'({fix})') from None
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
        raise ToolError(
            f'{config}: the forward pass on a {[1, c, h, w]} input failed '
            f'on {dev} ({type(e).__name__}: {e}); check --shape and '
            '--channels') from None
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
             osp.basename(results[-1]['config']) + ' |',
             '|---|---|---|---|---|']
    for i, r in enumerate(results):
        t, e = r['ops'].totals(), r['ops'].energy_pj(bits, table)
        if i == len(results) - 1:
            vs = 'reference'
        else:
            vs = f'{last / e:.2f}x less' if e else '-'
        lines.append(f'| {osp.basename(r["config"])} | {fmt(t["mults"])} | '
                     f'{fmt(t["adds"])} | {fmt_energy(e)} | {vs} |')
    return '\n'.join(lines)


def compare(a, b, bits, table):
    """Saving of config a against config b (usually AdderNet vs CNN).

    ``energy_saving`` (1 - energy a / energy b) is None when b uses no
    energy, ``energy_ratio`` (energy b / energy a) when a uses none: an
    energy table with 0 pJ per op is valid (e.g. free additions) but leaves
    those fractions without a value (printed n/a, null in JSON)."""
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


def comparison_text(summary):
    """One line for a :func:`compare` summary; a saving or ratio without a
    value (a model of 0 pJ) reads n/a."""
    saving, ratio = summary['energy_saving'], summary['energy_ratio']
    saving = 'n/a' if saving is None else f'{100 * saving:.1f}%'
    ratio = ('ratio n/a: a model uses 0 pJ in this energy table'
             if ratio is None else f'{ratio:.2f}x less')
    return (f'{summary["config"]} vs {summary["against"]} '
            f'({summary["bits"]}): mults {fmt(summary["mults"])} vs '
            f'{fmt(summary["mults_other"])}, adds {fmt(summary["adds"])} vs '
            f'{fmt(summary["adds_other"])}, energy '
            f'{fmt_energy(summary["energy_pj"])} vs '
            f'{fmt_energy(summary["energy_pj_other"])}: saving {saving} '
            f'({ratio})')


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
