"""Count multiplications, additions and energy of one forward pass.

Forward hooks on every ``AdderConv2d``, convolution (``nn.Conv1d/2d/3d`` and
subclasses such as mmcv's wrappers) and ``nn.Linear`` record the real input
and output shapes, whichever registry built the module. Conventions, per
output element, with ``K = in_channels / groups * prod(kernel_size)``
(``K = in_features`` for Linear):

* convolution / linear: ``K`` multiplications and ``K`` additions (one
  multiply-accumulate per term, the accumulator starting at zero). This is
  the paper's convention ("41.17M multiplications + 41.17M additions").
* adder layer: ``K`` subtractions and ``K`` accumulations, counted as ``2K``
  additions and no multiplication; the ``K`` absolute values are sign-bit
  operations, reported in ``abs_ops`` and given no energy.
* a bias adds one addition per output element (``bias_adds``, included in
  ``adds``).
* quantized adder layer (QuantAdderConv2d, ``b``-bit): per output element
  ``K`` b-bit subtractions (priced as int8 adds), ``K`` int32
  accumulations and the dequantization (one fp32 multiply and add); per
  input element and group, the input's quantization (one fp32 add and
  multiply); per output position and group with a remainder, ``K`` int32
  accumulations of its weight-free window sum. These ops carry their own
  precision; float layers use the ``bits`` row asked for.

BatchNorm, activations, pooling and residual additions are not counted (the
paper counts convolution layers only; BN folds into the preceding layer at
inference); the leaf modules that ran but were not counted are listed in
``ModelOps.uncounted``.

Energy per operation defaults to the 45 nm figures of Horowitz (ISSCC 2014)
quoted by the paper, in picojoules.
"""
import copy
import json
import math
import warnings
from collections import Counter, OrderedDict

import torch.nn as nn

from adder_mm.models import AdderConv2d, QuantAdderConv2d

#: pJ per addition and per multiplication at 45 nm (Horowitz, ISSCC 2014).
ENERGY_45NM_PJ = OrderedDict([
    ('fp32', dict(add=0.9, mult=3.7)),
    ('fp16', dict(add=0.4, mult=1.1)),
    ('int32', dict(add=0.1, mult=3.1)),
    ('int8', dict(add=0.03, mult=0.2)),
])

CONVENTION = (
    'per output element, K = Cin/groups*kh*kw (Linear: in_features): '
    'conv/linear = K mults + K adds; adder = 2K adds (K subtractions + K '
    'accumulations) + K abs (sign-bit ops, no energy); bias = 1 add; '
    'quantized adder = K int8 subtractions + K int32 accumulations + 1 fp32 '
    'mult + 1 fp32 add (dequantization), input quantization 1 fp32 mult + '
    '1 fp32 add per input element and group. '
    'Counted: AdderConv2d, QuantAdderConv2d, nn.ConvNd (not transposed), '
    'nn.Linear. '
    'Not counted: BN, activations, pooling, residual adds.')

_COUNT_KEYS = ('mults', 'adds', 'bias_adds', 'abs_ops')


def load_energy_table(table=None):
    """Validated energy table ``{bits: {'add': pJ, 'mult': pJ}}``.

    Args:
        table (dict | str | None): a dict, or a path to a JSON file holding
            one; entries override/extend :data:`ENERGY_45NM_PJ`. ``None``
            gives the default table.
    """
    merged = copy.deepcopy(ENERGY_45NM_PJ)
    if table is None:
        return merged
    if isinstance(table, str):
        try:
            with open(table) as f:
                table = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f'energy table {table!r}: cannot read JSON: {e}')
    if not isinstance(table, dict):
        raise ValueError('energy table must map bits names to '
                         f"{{'add': pJ, 'mult': pJ}}, got {type(table)}")
    for bits, entry in table.items():
        if not isinstance(entry, dict) or set(entry) != {'add', 'mult'}:
            raise ValueError(f'energy table entry {bits!r} must have exactly '
                             f"the keys 'add' and 'mult', got {entry!r}")
        for k, v in entry.items():
            if (not isinstance(v, (int, float)) or isinstance(v, bool)
                    or not math.isfinite(v) or v < 0):
                raise ValueError(f'energy table {bits!r}.{k} must be a '
                                 f'non-negative number of pJ, got {v!r}')
        merged[bits] = dict(add=float(entry['add']),
                            mult=float(entry['mult']))
    return merged


def _energy_pj(counts, bits, table):
    """Energy of counts: ``mults``/``adds`` at the ``bits`` row, except the
    ops of ``counts['fixed']`` ({'op@precision': n}), which carry their own
    precision (quantized layers) and are part of mults/adds."""
    if bits not in table:
        raise ValueError(f'unknown bits {bits!r}; the energy table has '
                         f'{sorted(table)}')
    e = table[bits]
    fixed = counts.get('fixed') or {}
    energy = 0.
    mults, adds = counts['mults'], counts['adds']
    for key, n in fixed.items():
        op, prec = key.split('@')
        energy += n * table[prec][op]
        if op == 'mult':
            mults -= n
        else:
            adds -= n
    return energy + mults * e['mult'] + adds * e['add']


def _layer_kind(module):
    """'adder', 'qadder', 'conv', 'linear' or None (not counted)."""
    if isinstance(module, AdderConv2d):
        return 'adder'
    if isinstance(module, QuantAdderConv2d):
        return 'qadder'
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return 'conv'
    if isinstance(module, nn.Linear):
        return 'linear'
    return None


def _first_tensor(x):
    if hasattr(x, 'shape'):
        return x
    if isinstance(x, (list, tuple)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


class LayerOps:
    """Operation counts of one counted module, summed over its calls.

    Attributes:
        name (str): module name in ``model.named_modules()``.
        kind (str): 'adder', 'conv' or 'linear'.
        module_type (str): class name.
        terms (int): K, terms per output element.
        calls (int): forward calls seen.
        input_shape, output_shape (tuple): shapes of the last call.
        outputs (int): output elements over all calls.
        mults, adds, bias_adds, abs_ops (int): operation counts.
    """

    def __init__(self, name, module):
        self.name = name
        self.kind = _layer_kind(module)
        self.module_type = type(module).__name__
        if self.kind == 'linear':
            self.terms = module.in_features
        else:
            self.terms = (module.in_channels // module.groups *
                          math.prod(module.kernel_size))
        self.has_bias = getattr(module, 'bias', None) is not None
        self.calls = 0
        self.input_shape = self.output_shape = None
        self.outputs = 0
        self.mults = self.adds = self.bias_adds = self.abs_ops = 0
        self.fixed = Counter()  # 'op@precision' -> count (quantized ops)
        if self.kind == 'qadder':
            self.num_groups = module.num_groups
            self.remainder = float(module.rem_scale) > 0
            self.conv_groups = module.groups

    def record(self, inputs, output):
        x, y = _first_tensor(inputs), _first_tensor(output)
        if x is None or y is None:
            raise RuntimeError(f'op counter: layer {self.name!r} got no '
                               'tensor input/output; cannot count it')
        n_out = math.prod(y.shape)
        terms = n_out * self.terms
        bias = n_out if self.has_bias else 0
        if self.kind == 'adder':
            self.adds += 2 * terms + bias
            self.abs_ops += terms
        elif self.kind == 'qadder':
            n_in = math.prod(x.shape)
            positions = n_out // y.shape[1] * self.conv_groups
            window = (positions * self.terms * self.num_groups
                      if self.remainder else 0)
            add = Counter({'add@int8': terms, 'add@int32': terms + window,
                           'add@fp32': n_out + n_in * self.num_groups,
                           'mult@fp32': n_out + n_in * self.num_groups})
            self.fixed.update(add)
            self.adds += sum(v for k, v in add.items() if k.startswith('add'))
            self.mults += add['mult@fp32']
            self.abs_ops += terms
            bias = 0  # folded into the dequantization
        else:
            self.mults += terms
            self.adds += terms + bias
        self.bias_adds += bias
        self.outputs += n_out
        self.calls += 1
        self.input_shape = tuple(x.shape)
        self.output_shape = tuple(y.shape)

    def counts(self):
        c = {k: getattr(self, k) for k in _COUNT_KEYS}
        if self.fixed:
            c['fixed'] = dict(self.fixed)
        return c

    def to_dict(self, bits='fp32', table=None):
        table = load_energy_table() if table is None else table
        d = dict(name=self.name, kind=self.kind, module_type=self.module_type,
                 calls=self.calls, input_shape=list(self.input_shape),
                 output_shape=list(self.output_shape), terms=self.terms,
                 outputs=self.outputs)
        d.update(self.counts())
        d['energy_pj'] = _energy_pj(d, bits, table)
        return d


class ModelOps:
    """Counts of a whole forward pass: ``layers`` (in call order) and
    ``uncounted`` (leaf module class name -> calls that were not counted)."""

    def __init__(self, layers, uncounted):
        self.layers = list(layers)
        self.uncounted = dict(uncounted)

    @staticmethod
    def _sum(layers):
        out = {k: 0 for k in _COUNT_KEYS}
        fixed = Counter()
        for layer in layers:
            for k in _COUNT_KEYS:
                out[k] += getattr(layer, k)
            fixed.update(layer.fixed)
        if fixed:
            out['fixed'] = dict(fixed)
        return out

    def totals(self):
        """Sums of mults, adds, bias_adds, abs_ops over all layers (and of
        the quantized layers' ops by precision, ``fixed``)."""
        return self._sum(self.layers)

    def totals_by_kind(self):
        """{'adder'|'qadder'|'conv'|'linear': totals} for the kinds
        present."""
        kinds = OrderedDict()
        for layer in self.layers:
            kinds.setdefault(layer.kind, []).append(layer)
        return OrderedDict((k, self._sum(v)) for k, v in kinds.items())

    def by_group(self, depth=2):
        """Totals per group of layers sharing the first ``depth`` name parts
        (``backbone.layer1.0.conv1`` -> ``backbone.layer1`` for depth 2), in
        first-call order; used as 'stages'."""
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f'group depth must be a positive int, got '
                             f'{depth!r}')
        groups = OrderedDict()
        for layer in self.layers:
            key = '.'.join(layer.name.split('.')[:depth]) or '<model>'
            groups.setdefault(key, []).append(layer)
        return OrderedDict((k, self._sum(v)) for k, v in groups.items())

    def energy_pj(self, bits='fp32', table=None):
        """Energy of the forward pass in pJ (mults and adds; abs is free)."""
        table = load_energy_table() if table is None else table
        return _energy_pj(self.totals(), bits, table)

    def to_dict(self, bits='fp32', table=None, group_depth=2):
        table = load_energy_table() if table is None else table
        groups = OrderedDict()
        for key, c in self.by_group(group_depth).items():
            groups[key] = dict(c, energy_pj=_energy_pj(c, bits, table))
        return dict(
            convention=CONVENTION,
            bits=bits,
            energy_table_pj=table[bits],
            totals=dict(self.totals(), energy_pj=self.energy_pj(bits, table)),
            totals_by_kind=self.totals_by_kind(),
            groups=groups,
            layers=[layer.to_dict(bits, table) for layer in self.layers],
            uncounted_modules=self.uncounted)


def _counted_modules(model):
    """(name, module) of counted layers with no counted layer inside them,
    so a counted wrapper around a counted layer is not counted twice."""
    named = [(n, m) for n, m in model.named_modules()
             if _layer_kind(m) is not None]
    out = []
    for name, module in named:
        inner = any(_layer_kind(c) is not None for c in module.modules()
                    if c is not module)
        if not inner:
            out.append((name, module))
    return out


def count_ops(model, *inputs, forward=None, **kwargs):
    """Run one forward pass under hooks and count its operations.

    Args:
        model (nn.Module): the model; not modified (hooks are removed).
        *inputs, **kwargs: passed to ``forward``.
        forward (callable, optional): what to call instead of ``model``
            (e.g. ``lambda x: model(x, mode='tensor')``).

    Returns:
        ModelOps: per-layer counts in call order; a module called twice is
        one entry with ``calls == 2``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'count_ops: model must be an nn.Module, got '
                        f'{type(model).__name__}')
    counted = _counted_modules(model)
    counted_ids = {id(m) for _, m in counted}
    records = {}
    order = []
    uncounted = Counter()
    handles = []

    def make_hook(name, module):
        def hook(mod, args, output):
            rec = records.get(name)
            if rec is None:
                rec = records[name] = LayerOps(name, mod)
                order.append(name)
            rec.record(args, output)
        return hook

    def other_hook(mod, args, output):
        uncounted[type(mod).__name__] += 1

    try:
        for name, module in counted:
            handles.append(module.register_forward_hook(
                make_hook(name, module)))
        for _, module in model.named_modules():
            is_leaf = next(iter(module.children()), None) is None
            if is_leaf and id(module) not in counted_ids:
                handles.append(module.register_forward_hook(other_hook))
        call = model if forward is None else forward
        call(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    if not order:
        warnings.warn('count_ops: the forward pass ran no AdderConv2d, '
                      'convolution or Linear layer; all counts are zero')
    return ModelOps([records[n] for n in order], uncounted)


def adder_flop_jit(inputs, outputs):
    """MMEngine/fvcore flop handle for the traced adder op (ADDER_JIT_OPS).

    Counts one "flop" per adder term (one subtraction + one accumulation),
    the unit MMEngine uses for a multiply-accumulate, so an AdderNet and its
    CNN twin report the same FLOPs: that number cannot show the saved
    multiplications; use :func:`count_ops` for that.
    """
    from mmengine.analysis.jit_handles import get_shape
    w_shape, out_shape = get_shape(inputs[1]), get_shape(outputs[0])
    if w_shape is None or out_shape is None or len(w_shape) != 4:
        raise ValueError('adder_flop_jit: expected a 4-D weight and a traced '
                         f'output, got {w_shape} and {out_shape}')
    return math.prod(out_shape) * math.prod(w_shape[1:])


# How torch.jit.trace records an adder layer: the compiled op, or the
# Python autograd Function of the fallback (no compiled kernel).
ADDER_JIT_OP = 'adder_mm::adder2d'
ADDER_JIT_OPS = (ADDER_JIT_OP, 'prim::PythonOp.Adder2dFunction')


def register_mmengine_flop_handle():
    """Teach MMEngine's complexity analysis the adder op (FLOPs and
    activations).

    A ``FlopAnalyzer`` accepts ``set_op_handle(name, adder_flop_jit)`` for
    each name in ADDER_JIT_OPS; but ``get_model_complexity_info`` (and
    mmpretrain's
    ``tools/analysis_tools/get_flops.py``) build their own analyzers from
    MMEngine's module-level default tables, so this adds the handles there
    (private dicts of mmengine 0.10; idempotent). Without it, adder layers
    are skipped as unsupported: get_flops reports 0.85M FLOPs for the
    ResNet-20 AdderNet instead of 41.2M.
    """
    from mmengine.analysis import complexity_analysis
    from mmengine.analysis.jit_handles import generic_activation_jit
    flops = getattr(complexity_analysis, '_DEFAULT_SUPPORTED_FLOP_OPS', None)
    acts = getattr(complexity_analysis, '_DEFAULT_SUPPORTED_ACT_OPS', None)
    if not isinstance(flops, dict) or not isinstance(acts, dict):
        raise RuntimeError('this MMEngine version has no default op-handle '
                           'tables; use FlopAnalyzer.set_op_handle('
                           'name, adder_flop_jit) for each name in '
                           'ADDER_JIT_OPS instead')
    for name in ADDER_JIT_OPS:
        flops[name] = adder_flop_jit
        acts[name] = generic_activation_jit('adder')
