"""Post-training quantization of AdderNets: calibrate, then replace every
AdderConv2d by a QuantAdderConv2d.

Two methods (``method``):

- ``'shared'`` (Wang et al. 2021): one grid per layer, shared by weights and
  input, spanning the calibrated minimum and maximum of both.
- ``'grouped'`` (after Nie et al. 2022, our formulation): the input range is
  clamped at a calibrated percentile (outliers), the weights are clamped into
  that range exactly (for x in [a, b], |x - w| = |x - clamp(w, a, b)| +
  |w - clamp(w, a, b)|: the second term is a per-channel constant moved into
  the bias; with a ReLU input, a = 0 and every negative weight becomes 0), and
  the output channels are clustered by their weights' range into groups with
  a grid each, the part of the input outside a group's grid being summed
  exactly on the activation grid (see QuantAdderConv2d). A layer with conv
  ``groups`` > 1 (depthwise, grouped) keeps its channels in one cluster: a
  cluster must hold whole conv groups in their order.

Quantization-aware training (``calibrate_qat``) fixes the shared grid of
each QATAdderConv2d before training; ``quantize_model`` then converts those
layers on their own grid, so the integer model computes what was trained.
"""
import warnings

import torch

from adder_mm.models.layers import (
    AdderConv2d,
    QATAdderConv2d,
    QuantAdderConv2d,
)
from adder_mm.ops import quantize_to_grid_reference

METHODS = ('shared', 'grouped')
# Values of one layer's inputs kept for the percentile (a random sample).
_SAMPLE = 1 << 21


class CalibrationError(ValueError):
    """The model or the calibration data cannot be quantized as asked."""


def adder_layers(model):
    """(name, module) of every AdderConv2d of ``model``."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, AdderConv2d)]


class _InputStats:
    """Minimum, maximum and a uniform random sample of a layer's inputs."""

    def __init__(self, seed, name='', who='quantize'):
        self.name, self.who = name, who
        self.min, self.max, self.seen = float('inf'), float('-inf'), 0
        self.sample = []
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, module, inputs):
        x = inputs[0].detach()
        if x.numel() == 0:
            return
        if not torch.isfinite(x).all():
            raise CalibrationError(
                f'{self.who}: the input of adder layer {self.name} holds NaN '
                'or inf during calibration (check the data and the float '
                'model)')
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        flat = x.reshape(-1).float().cpu()
        keep = min(flat.numel(), _SAMPLE // 8)
        idx = torch.randint(flat.numel(), (keep, ), generator=self.gen)
        self.sample.append(flat[idx])
        self.seen += 1

    def percentile(self, q):
        values = torch.cat(self.sample)
        if values.numel() > _SAMPLE:
            values = values[torch.randperm(values.numel(),
                                           generator=self.gen)[:_SAMPLE]]
        return float(torch.quantile(values, q / 100.))


def default_forward(model, batch):
    """One calibration forward: MMEngine models take a data batch through
    their data preprocessor; other modules take a tensor, or the first item
    of a tuple or list (``(images, labels)``, a TensorDataset's batch)."""
    if hasattr(model, 'data_preprocessor') and isinstance(batch, dict):
        data = model.data_preprocessor(batch, False)
        return model(**data, mode='tensor')
    if isinstance(batch, (tuple, list)) and batch and \
            isinstance(batch[0], torch.Tensor):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise CalibrationError(
            f'calibration: a batch is a {type(batch).__name__}, which '
            'the default forward cannot feed to the model (it takes '
            'a tensor, a tuple or list starting with one, or a dict for an '
            'MMEngine model); pass forward=lambda model, batch: ...')
    return model(batch)


@torch.no_grad()
def calibrate(model, batches, num_batches, forward=default_forward, seed=0,
              keep=0, who='quantize'):
    """Run ``num_batches`` of ``batches`` through ``model`` (eval mode);
    returns ({layer name: input statistics} of its adder layers, the number
    of batches used, the first ``keep`` batches). Errors begin with
    ``who``."""
    if not isinstance(num_batches, int) or isinstance(num_batches, bool) or \
            num_batches < 1:
        raise CalibrationError(f'{who}: the number of calibration batches '
                               f'must be a positive int, got {num_batches!r}')
    layers = adder_layers(model)
    stats = {name: _InputStats(seed + i, name, who) for i, (name, _) in
             enumerate(layers)}
    handles = [m.register_forward_pre_hook(stats[n]) for n, m in layers]
    was_training = model.training
    model.eval()
    used, kept = 0, []
    try:
        for batch in batches:
            if used >= num_batches:
                break
            forward(model, batch)
            if used < keep:
                kept.append(batch)
            used += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if used == 0:
        raise CalibrationError(f'{who}: the calibration data loader '
                               'yielded no batch')
    for name, s in stats.items():
        if s.seen == 0:
            raise CalibrationError(
                f'{who}: adder layer {name} saw no input during '
                'calibration (is it used in the forward pass?)')
    return stats, used, kept


@torch.no_grad()
def correct_bias(model, planned, batches, forward=default_forward):
    """Empirical bias correction: for each adder layer, the mean over images
    and positions of (quantized - float) output per channel, taken on the
    float model's own inputs to the layer, moves into the quantized layer's
    bias. Quantization error that is the same for every input (a weight
    rounded outside the range its inputs take changes |x - w| by a
    constant) then cancels exactly, and the rest in the mean."""
    sums, positions = {}, {}

    def hook(name):
        def run(module, inputs):
            x = inputs[0]
            # forward(), not __call__: this hook would run again
            diff = planned[name](x).double() - module.forward(x).double()
            sums[name] = sums.get(name, 0) + diff.sum(dim=(0, 2, 3))
            positions[name] = positions.get(name, 0) + \
                diff.shape[0] * diff.shape[2] * diff.shape[3]
        return run

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_pre_hook(hook(name))
               for name in planned]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name, q in planned.items():
        if positions.get(name):
            mean = (sums[name] / positions[name]).to(q.out_bias)
            q.out_bias -= mean[q.perm.to(mean.device)]


# The narrowest range a grid spans (a narrower one is widened to it).
_MIN_SPAN = 1e-8


def _on_grid(lo, hi, qmax):
    """A grid lo + scale * q (q = 0..qmax) covering [lo, hi] on which 0.0
    is exact when it lies inside (so zero padding is exact)."""
    scale = max(hi - lo, _MIN_SPAN) / qmax
    if lo < 0 < hi:
        lo = -round(-lo / scale) * scale
    return lo, scale


def shared_grid(stats, weight, qmax):
    """(lo, scale) of the one grid per layer ('shared'): spans the
    calibrated input range, the weights and 0.0 (exact on the grid)."""
    lo = min(stats.min, float(weight.min()), 0.)
    hi = max(stats.max, float(weight.max()), 0.)
    return _on_grid(lo, hi, qmax)


def input_range(stats, act_percentile):
    """(lo, hi) of the calibrated inputs, clipped at ``act_percentile``
    (mirrored below for inputs that go negative), widened to hold 0.0."""
    if act_percentile >= 100:  # the extremes, not the sample's
        return min(stats.min, 0.), max(stats.max, 0.)
    hi = max(stats.percentile(act_percentile), 0.)
    lo = 0. if stats.min >= 0 else min(
        stats.percentile(100. - act_percentile), 0.)
    return lo, hi


def input_grid(stats, qmax, act_percentile):
    """(lo, scale) of a grid over the calibrated inputs alone
    (:func:`input_range`; 0.0 inside and exact)."""
    return _on_grid(*input_range(stats, act_percentile), qmax)


def qat_layers(model):
    """(name, module) of every QATAdderConv2d of ``model``."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, QATAdderConv2d)]


def calibrate_qat(model, batches, num_batches=8, forward=default_forward,
                  recalibrate=False, act_percentile=99.99):
    """Fix the grid of every QATAdderConv2d of ``model`` that has none (all
    of them with ``recalibrate``) from ``num_batches`` of ``batches``: a
    grid over the float model's inputs to the layer, clipped at
    ``act_percentile`` (as the 'grouped' method clips them). The weights
    are not in it: the fake quantizer clamps them into it, and training
    learns with that clamp (the integer layer computes the same). Run it
    before quantization-aware training (QATCalibrationHook does, in
    MMEngine), on a trained float model: an untrained one's inputs carry no
    range to calibrate.

    Returns:
        dict: {layer name: (lo, scale)} of the layers it set.

    Raises:
        CalibrationError: no QATAdderConv2d layers, no calibration data, a
        layer whose inputs span no range (all equal, or all but a fraction
        below ``act_percentile``). The grids are then as they were.
    """
    check_percentile(act_percentile, 'calibrate_qat')
    layers = qat_layers(model)
    if not layers:
        raise CalibrationError(
            'calibrate_qat: the model has no QATAdderConv2d layers (build it '
            "with conv_cfg=dict(type='QATAdder', bits=...))")
    todo = [(n, m) for n, m in layers if recalibrate or not m.calibrated]
    if not todo:
        return {}
    before = {n: (m.grid_lo.clone(), m.grid_scale.clone()) for n, m in todo}
    try:
        for _, m in todo:  # the float layer's inputs, as PTQ sees them
            m.set_grid(float('nan'), float('nan'))
        stats, _, _ = calibrate(model, batches, num_batches, forward,
                                who='calibrate_qat')
        ranges = {n: input_range(stats[n], act_percentile) for n, _ in todo}
        flat = [n for n, (lo, hi) in ranges.items() if hi - lo < _MIN_SPAN]
        if flat:
            lo, hi = ranges[flat[0]]
            raise CalibrationError(
                f'calibrate_qat: the inputs of {len(flat)} QAT layers span '
                f'no range, e.g. {flat[0]}: [{lo:.3g}, {hi:.3g}] at '
                f'act_percentile {act_percentile} (an untrained float model? '
                'QAT fine-tunes a trained one: load its float checkpoint '
                'first; with inputs that are almost all 0, raise '
                'act_percentile)')
        grids = {}
        for name, m in todo:
            m.set_grid(*_on_grid(*ranges[name], m.qmax))
            grids[name] = m.grid()  # as stored (float32)
    except BaseException:
        for name, m in todo:
            m.set_grid(*before[name])
        raise
    return grids


def _cluster_channels(lo, hi, k, iters=25):
    """Cluster channels by (lo, hi) of their weights into at most k groups
    (deterministic: initial centres at quantiles of the range width)."""
    pts = torch.stack([lo, hi], 1).double()
    order = torch.argsort(hi - lo)
    k = min(k, len(pts))
    centres = pts[order[torch.linspace(0, len(pts) - 1, k).round().long()]]
    assign = torch.zeros(len(pts), dtype=torch.long)
    for _ in range(iters):
        assign = torch.cdist(pts, centres).argmin(1)
        new = torch.stack([pts[assign == j].mean(0) if (assign == j).any()
                           else centres[j] for j in range(k)])
        if torch.allclose(new, centres):
            break
        centres = new
    used = [j for j in range(k) if (assign == j).any()]
    # Groups ordered by their upper bound; empty clusters dropped.
    used.sort(key=lambda j: float(pts[assign == j, 1].max()))
    return [torch.nonzero(assign == j).flatten() for j in used]


def plan_layer(layer, stats, bits, method, num_groups, act_percentile):
    """The QuantAdderConv2d for ``layer`` given its input statistics."""
    qmax = (1 << bits) - 1
    w = layer.weight.detach().double().cpu()
    o = w.shape[0]
    bias = (layer.bias.detach().double().cpu() if layer.bias is not None
            else torch.zeros(o, dtype=torch.float64))
    trained = layer.grid() if isinstance(layer, QATAdderConv2d) else None
    if method == 'shared':
        lo, scale = trained or shared_grid(stats, w, qmax)
        groups = [torch.arange(o)]
        ranges = [(lo, scale)]
        act_lo, act_hi = lo, lo + scale * qmax
        clamped, const = w, torch.zeros(o, dtype=torch.float64)
        rem = 0.
    else:
        act_lo, rem = input_grid(stats, qmax, act_percentile)
        act_hi = act_lo + rem * qmax
        clamped = w.clamp(act_lo, act_hi)
        const = (w - clamped).abs().flatten(1).sum(1)
        flat = clamped.flatten(1)
        groups = _cluster_channels(flat.min(1).values, flat.max(1).values,
                                   num_groups if layer.groups == 1 else 1)
        ranges = []
        for idx in groups:
            glo, ghi = float(flat[idx].min()), float(flat[idx].max())
            ranges.append(_on_grid(glo, ghi, qmax))
        # A single group spanning the activation grid needs no remainder.
        if len(groups) == 1 and ranges[0][0] <= act_lo and \
                ranges[0][0] + ranges[0][1] * qmax >= act_hi:
            rem = 0.
    q = QuantAdderConv2d(layer.in_channels, layer.out_channels,
                         layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, layer.groups, bits=bits,
                         num_groups=len(groups))
    perm = torch.cat(groups)
    qw = torch.empty_like(w, dtype=torch.uint8)
    for idx, (glo, scale) in zip(groups, ranges):
        qw[idx] = torch.round((clamped[idx] - glo) / scale).clamp(
            0, qmax).to(torch.uint8)
    if trained:  # the codes the training's forward used, bit for bit
        qw = quantize_to_grid_reference(layer.weight.detach().float().cpu(),
                                        lo, scale, qmax)
    device = layer.weight.device
    q.qweight.copy_(qw[perm])
    q.perm.copy_(perm)
    q.group_sizes.copy_(torch.tensor([len(i) for i in groups]))
    q.lo.copy_(torch.tensor([r[0] for r in ranges]))
    q.scale.copy_(torch.tensor([r[1] for r in ranges]))
    q.out_bias.copy_((bias - const)[perm])
    q.act_lo.fill_(act_lo)
    q.act_hi.fill_(act_hi)
    q.rem_scale.fill_(rem)
    return q.to(device)


def _set_module(model, name, module):
    parent, _, attr = name.rpartition('.')
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def check_percentile(act_percentile, who='quantize'):
    if isinstance(act_percentile, bool) or \
            not isinstance(act_percentile, (int, float)) or \
            not 50. < act_percentile <= 100.:
        raise CalibrationError(f'{who}: act_percentile must be a number in '
                               f'(50, 100], got {act_percentile!r}')


def check_bits(bits):
    if not isinstance(bits, int) or isinstance(bits, bool) or \
            not 2 <= bits <= 8:
        raise CalibrationError(f'quantize: bits must be an int in 2..8 '
                               f'(they are stored as bytes), got {bits!r}')


def conversion_bits(model, bits, method):
    """The bits ``quantize_model`` converts ``model`` at: ``bits`` checked
    against the model's QAT layers (None: theirs, or 8 without any), and
    ``method`` against their grids. QAT layers without a grid (never
    calibrated: a float checkpoint) are quantized post-training like float
    ones, at any bits, with a warning.

    Raises:
        CalibrationError: bits or method the trained grids refuse.
    """
    layers = qat_layers(model)
    widths = {m.bits for _, m in layers}
    trained = [n for n, m in layers if m.calibrated]
    if len(widths) > 1 and (trained or bits is None):
        raise CalibrationError(
            'quantize: the QAT layers were built for different bit widths '
            f'{sorted(widths)}; a quantized model has one' +
            ('' if trained else ' (pass bits to quantize them '
             'post-training)'))
    if trained and bits is not None and bits not in widths:
        raise CalibrationError(
            f'quantize: the model was trained for {min(widths)}-bit integers '
            f'(QATAdderConv2d), not {bits}: pass bits={min(widths)} (or '
            'None)')
    if trained and method != 'shared':
        raise CalibrationError(
            "quantize: a QAT-trained model is converted on its trained grid "
            f"(method 'shared'), not {method!r}")
    if len(trained) < len(layers):
        warnings.warn(
            f'quantize: {len(layers) - len(trained)} QAT layers have no grid '
            '(not trained with QAT: a float checkpoint?); they are quantized '
            'post-training')
    if bits is None:
        bits = min(widths) if widths else 8
    return bits


def quantize_model(model, batches, num_batches=8, bits=None, method='shared',
                   num_groups=4, act_percentile=99.99, bias_correction=True,
                   forward=default_forward):
    """Post-training quantization of the adder layers of ``model``, in place.

    Args:
        model (nn.Module): with AdderConv2d layers (other layers stay
            float: stem conv, BN, classifier).
        batches (iterable): calibration data (e.g. a DataLoader over
            training images with the test pipeline).
        num_batches (int): batches of ``batches`` to calibrate on.
        bits (int): 2..8; None: the bits of the model's QAT layers, or 8.
        method (str): 'shared' or 'grouped' (module docstring); a model
            trained with QATAdderConv2d layers takes 'shared', on the grid
            it was trained on.
        num_groups (int): output-channel groups per layer ('grouped').
        act_percentile (float): upper percentile of a layer's inputs kept
            ('grouped'; the lower one mirrors it for inputs that go
            negative).
        bias_correction (bool): fold the mean quantization error of each
            output channel, measured on the first (up to 2) calibration
            batches, into the bias (empirical bias correction).
        forward (callable): ``forward(model, batch)`` runs one batch.

    Returns:
        dict: the quantization spec stored in a quantized checkpoint's meta
        (bits, method, per-layer group counts).

    Raises:
        CalibrationError: no adder layers, bad arguments, no calibration
        data. Nothing is changed then.
    """
    if method not in METHODS:
        raise CalibrationError(f'quantize: method must be one of {METHODS}, '
                               f'got {method!r}')
    if bits is not None:
        check_bits(bits)
    bits = conversion_bits(model, bits, method)
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or \
            num_groups < 1:
        raise CalibrationError('quantize: num_groups must be a positive int, '
                               f'got {num_groups!r}')
    check_percentile(act_percentile)
    layers = adder_layers(model)
    if not layers:
        if any(isinstance(m, QuantAdderConv2d) for m in model.modules()):
            raise CalibrationError('quantize: the model is quantized already '
                                   '(it has QuantAdderConv2d layers)')
        raise CalibrationError(
            'quantize: the model has no adder layers (AdderConv2d) to '
            "quantize; a CNN is quantized with torch.ao ('torch-ao')")
    for name, m in layers:
        params = [m.weight] + ([m.bias] if m.bias is not None else [])
        if not all(torch.isfinite(p).all() for p in params):
            raise CalibrationError(f'quantize: adder layer {name} has NaN or '
                                   'inf weights or bias')
    stats, used, kept = calibrate(model, batches, num_batches, forward,
                                  keep=2 if bias_correction else 0)
    planned = {name: plan_layer(m, stats[name], bits, method, num_groups,
                                act_percentile) for name, m in layers}
    if bias_correction:
        correct_bias(model, planned, kept, forward)
    for name, q in planned.items():
        _set_module(model, name, q)
    return dict(bits=bits, method=method, num_groups=num_groups,
                act_percentile=act_percentile, calib_batches=used,
                bias_correction=bool(bias_correction),
                qat_layers=sum(isinstance(m, QATAdderConv2d) and m.calibrated
                               for _, m in layers),
                layers={name: q.num_groups for name, q in planned.items()})


def convert_structure(model, spec):
    """Replace the adder layers named in a quantized checkpoint's ``spec``
    by empty QuantAdderConv2d of the recorded shape, so that the
    checkpoint's state dict loads into ``model``.

    Raises:
        CalibrationError: a layer of the spec is not an AdderConv2d of
        ``model`` (the checkpoint belongs to another model), or the spec
        is damaged.
    """
    layers = spec.get('layers') if isinstance(spec, dict) else None
    if not isinstance(layers, dict) or not all(
            isinstance(n, str) and isinstance(g, int)
            and not isinstance(g, bool) for n, g in layers.items()):
        raise CalibrationError(
            "the quantized checkpoint's spec is damaged: expected a dict "
            "with 'bits' and 'layers' {layer name: number of groups}, got "
            f'{spec!r:.200}')
    check_bits(spec.get('bits'))
    modules = dict(model.named_modules())
    missing = [n for n in spec['layers']
               if not isinstance(modules.get(n), AdderConv2d)]
    if missing:
        raise CalibrationError(
            'the quantized checkpoint names adder layers this model does not '
            f'have: {", ".join(missing[:6])}' +
            (' ...' if len(missing) > 6 else ''))
    quantized = {}
    for name, groups in layers.items():
        m = modules[name]
        try:
            quantized[name] = QuantAdderConv2d(
                m.in_channels, m.out_channels, m.kernel_size, m.stride,
                m.padding, m.dilation, m.groups, bits=spec['bits'],
                num_groups=groups).to(m.weight.device)
        except ValueError as e:
            raise CalibrationError(f'the quantized checkpoint, layer {name}: '
                                   f'{e}') from None
    for name, q in quantized.items():  # all or nothing
        _set_module(model, name, q)
    return model
