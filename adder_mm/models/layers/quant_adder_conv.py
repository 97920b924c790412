"""QuantAdderConv2d: an adder layer that runs on integers."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from adder_mm.ops import adder2d_int8, quantize_to_grid
from adder_mm.utils.registry import register_model

from .adder_conv import apply_keeping_float32, set_window_geometry


@register_model()
class QuantAdderConv2d(nn.Module):
    """AdderConv2d with integer weights: the layer of a post-training
    quantized AdderNet (adder_mm.quantization builds it from an AdderConv2d
    and calibration data; a quantized checkpoint loads into it).

    With the input x clamped to the calibrated range [act_lo, act_hi] and
    the output channels split into groups, each group g with its own grid
    ``lo_g + scale_g * q`` (q = 0..2^bits - 1) that holds its weights:

        y[o] = out_bias[o] - scale_g * S_g[o] - rem_scale * R_g

        S_g[o] = sum |q_g(clamp(x, lo_g, hi_g)) - qweight[o]|   (adder2d_int8)
        R_g    = sum q_r(relu(x - hi_g) + relu(lo_g - x))       (adder2d_int8
                                                         against zero bytes)

    with sums over the filter's window (padding taps read x = 0). This is
    exact before rounding: for w in [lo, hi], |x - w| = |clamp(x, lo, hi) -
    w| + relu(x - hi) + relu(lo - x), so a group's grid only needs to span
    its own weights, and the part of x outside it is a weight-free window
    sum R_g on the activation grid (step ``rem_scale``). ``out_bias`` holds
    the layer's bias minus the constants that clamping the weights into
    the activation range moved out of the sums (and minus the mean
    quantization error of each channel, with bias correction). One group
    whose grid spans the whole activation range needs no R (``rem_scale``
    0): the classic one-scale-per-layer scheme. Dequantization is one
    multiply per output (fused into the integer kernel) plus one per window
    for R.

    Buffers: qweight uint8 [O, C/groups, kh, kw] in group order; perm int64
    [O] (the output channel of each row of qweight; None-equivalent when
    the identity); group_sizes int64 [G]; lo, scale float32 [G]; out_bias
    float32 [O] in group order; act_lo, act_hi, rem_scale float32 [].

    Shapes: input [N, C, H, W] (or [C, H, W]) float -> output [N, O, Ho,
    Wo] in the input's dtype, computed in float32 (channels_last on CPU).
    The float buffers stay float32 when the module is cast (``.half()``,
    ``.double()``): they are the integer kernel's arguments.
    """

    _FLOAT32_BUFFERS = ('lo', 'scale', 'out_bias', 'act_lo', 'act_hi',
                        'rem_scale')

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=0, dilation=1, groups=1, bits=8, num_groups=1):
        super().__init__()
        for name, value, low, high in (('bits', bits, 2, 8),
                                       ('num_groups', num_groups, 1,
                                        out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or \
                    not low <= value <= high:
                raise ValueError(f'QuantAdderConv2d: {name} must be an int '
                                 f'in {low}..{high}, got {value!r}')
        set_window_geometry(self, in_channels, out_channels, kernel_size,
                            stride, padding, dilation, groups)
        self.bits = bits
        self.num_groups = num_groups
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        # channels_last: the integer kernel packs its weight blocks from
        # [O, kh, kw, C] rows with plain copies (about 3x faster per call).
        self.register_buffer('qweight', torch.zeros(
            shape, dtype=torch.uint8).contiguous(
                memory_format=torch.channels_last))
        self.register_buffer('perm', torch.arange(out_channels))
        sizes = torch.full((num_groups, ), out_channels // num_groups)
        sizes[:out_channels % num_groups] += 1
        self.register_buffer('group_sizes', sizes)
        self.register_buffer('lo', torch.zeros(num_groups))
        self.register_buffer('scale', torch.ones(num_groups))
        self.register_buffer('out_bias', torch.zeros(out_channels))
        self.register_buffer('act_lo', torch.tensor(0.))
        self.register_buffer('act_hi', torch.tensor(0.))
        self.register_buffer('rem_scale', torch.tensor(0.))

    def _apply(self, fn, recurse=True):
        return apply_keeping_float32(
            self, lambda: super(QuantAdderConv2d, self)._apply(fn, recurse),
            self._FLOAT32_BUFFERS)

    @property
    def qmax(self):
        return (1 << self.bits) - 1

    def extra_repr(self):
        return (f'{self.in_channels}, {self.out_channels}, kernel_size='
                f'{self.kernel_size}, stride={self.stride}, padding='
                f'{self.padding}, groups={self.groups}, bits={self.bits}, '
                f'num_groups={self.num_groups}')

    def _window_sums(self, xq, pad):
        """Integer window sums of a weight-free uint8 map: [N, groups, Ho,
        Wo] as float32 (exact below 2^24)."""
        zeros = self.qweight.new_zeros(
            (self.groups, self.in_channels // self.groups,
             *self.kernel_size))
        return adder2d_int8(xq, zeros, self.stride, self.padding,
                            self.dilation, self.groups,
                            pad_value=pad).float()

    def forward(self, x):
        if x.dim() == 3:  # unbatched [C, H, W], as the float layer takes it
            return self(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'QuantAdderConv2d: expected input [N, {self.in_channels}, H,'
                f' W] or [{self.in_channels}, H, W], got {tuple(x.shape)}')
        if not x.is_floating_point():
            raise TypeError('QuantAdderConv2d: expected a floating point '
                            f'input (it quantizes it), got {x.dtype}')
        dtype, x = x.dtype, x.float()
        qmax, outs, start = self.qmax, [], 0
        if self.num_groups > 1 or float(self.rem_scale) > 0:
            # (One grid over the whole range clamps x itself below.)
            x = x.clamp(self.act_lo, self.act_hi)
        los, scales = self.lo.tolist(), self.scale.tolist()
        rem = float(self.rem_scale)
        for g, size in enumerate(self.group_sizes.tolist()):
            lo, scale = los[g], scales[g]
            hi = lo + scale * qmax
            rows = slice(start, start + size)
            start += size
            # (Values outside [lo, hi] land on 0 or qmax: no clamp needed.)
            xq = quantize_to_grid(x, lo, scale, qmax)
            pad = int(quantize_to_grid(torch.tensor([0.]), lo, scale, qmax))
            y = adder2d_int8(xq, self.qweight[rows], self.stride,
                             self.padding, self.dilation, self.groups,
                             pad_value=pad,
                             out_scale=self.scale[g].expand(size).contiguous(),
                             out_bias=self.out_bias[rows].contiguous())
            if rem > 0:
                # The parts of x outside this group's grid (exact sums of
                # their bytes on the activation grid).
                u = F.relu(x - hi) + F.relu(lo - x)
                upad = max(0. - hi, 0.) + max(lo - 0., 0.)
                r = self._window_sums(
                    quantize_to_grid(u, 0., rem, qmax),
                    int(round(upad / rem)))
                if self.groups == 1:
                    y = y - rem * r
                else:
                    per = self.out_channels // self.groups
                    conv_group = self.perm[rows] // per
                    y = y - rem * r[:, conv_group]
            outs.append(y)
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if self.num_groups > 1:
            y = y[:, torch.argsort(self.perm)]
        return y.to(dtype)
