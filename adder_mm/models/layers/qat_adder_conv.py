"""QATAdderConv2d: an adder layer trained for integer inference."""
import contextlib
import math
import warnings

import torch

from adder_mm.ops import adder2d
from adder_mm.ops.adder2d_int8 import check_grid, fake_quantize_unchecked
from adder_mm.utils.registry import register_model

from .adder_conv import AdderConv2d, apply_keeping_float32

_GRID = ('grid_lo', 'grid_scale')


@register_model('QATAdder')
class QATAdderConv2d(AdderConv2d):
    """AdderConv2d whose weights and input are snapped to one shared grid
    ``grid_lo + grid_scale * q`` (q = 0..2^bits - 1) in the forward pass,
    with straight-through gradients (quantization-aware training): what the
    integer layer (QuantAdderConv2d, one grid) will compute, so training
    learns weights that survive quantization.

    Same arguments as AdderConv2d plus ``bits`` (2..8). The grid is not an
    argument: ``adder_mm.quantization.calibrate_qat`` sets it from data (the
    layer's inputs up to a percentile), and it then stays fixed;
    ``QATCalibrationHook`` does that before training in MMEngine. 0.0 is a
    grid point (zero padding, ReLU zeros). A float AdderNet checkpoint loads
    into this layer (the grid is then unset, and calibrated again); a
    trained one carries its grid and bits, and ``quantize_model`` converts
    it to integers on that grid. The forward pass computes in float32 (also
    under autocast and in a ``.half()`` model), as the integer layer does,
    and returns the input's dtype.

    Without a grid the layer computes in float in eval mode (operation
    counting, calibration itself) and refuses to train.

    Buffers: grid_lo, grid_scale float32 [] (NaN until calibrated; they stay
    float32 when the module is cast); grid_bits int64 [] (``bits``, so that
    a checkpoint's grid is read with the bits it was made for).
    Shapes: as AdderConv2d.
    """

    # The state a float AdderConv2d's checkpoint lacks (loaded unset).
    GRID_KEYS = _GRID + ('grid_bits', )

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=0, dilation=1, groups=1, bias=False, bits=8,
                 device=None, dtype=None):
        if not isinstance(bits, int) or isinstance(bits, bool) or \
                not 2 <= bits <= 8:
            raise ValueError('QATAdderConv2d: bits must be an int in 2..8, '
                             f'got {bits!r}')
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding, dilation, groups, bias, device, dtype)
        self.bits = bits
        for name in _GRID:
            self.register_buffer(name, torch.tensor(
                float('nan'), device=device))
        self.register_buffer('grid_bits', torch.tensor(bits, device=device))
        # Mirrors isfinite(grid_scale), so that forward needs no host sync.
        self._calibrated = False

    def _apply(self, fn, recurse=True):
        return apply_keeping_float32(
            self, lambda: super(QATAdderConv2d, self)._apply(fn, recurse),
            _GRID)

    @property
    def qmax(self):
        return (1 << self.bits) - 1

    @property
    def calibrated(self):
        return self._calibrated

    def set_grid(self, lo, scale):
        """Fix the grid, or unset it with ``set_grid(nan, nan)``.

        ``lo`` (finite, <= 0) and ``scale`` (> 0) are taken in float32, and
        lo moves to the nearest multiple of scale, so that 0.0 is a grid
        point: the integer layer pads with its code, and the ReLU zeros of
        the input land on it exactly. 0.0 must lie in [lo, lo + scale *
        (2^bits - 1)], or within half a step of it.
        """
        try:
            unset = math.isnan(float(lo)) and math.isnan(float(scale))
        except (TypeError, ValueError, RuntimeError):
            unset = False
        if unset:
            self.grid_lo.fill_(float('nan'))
            self.grid_scale.fill_(float('nan'))
            self._calibrated = False
            return
        lo, scale = check_grid('QATAdderConv2d.set_grid', lo, scale,
                               self.qmax)
        zero = -lo / scale  # where 0.0 is, in steps of the grid
        if not -0.5 <= zero <= self.qmax + 0.5:
            raise ValueError(
                'QATAdderConv2d.set_grid: the grid must hold 0.0 (zero '
                'padding and ReLU zeros), i.e. lo <= 0 <= lo + scale * '
                f'{self.qmax}; got lo={lo}, scale={scale}')
        k = min(max(round(zero), 0), self.qmax)
        self.grid_lo.fill_(0. - k * scale)
        self.grid_scale.fill_(scale)
        self._calibrated = True

    def grid(self):
        """(lo, scale) as floats; None before calibration."""
        if not self._calibrated:
            return None
        return float(self.grid_lo), float(self.grid_scale)

    def forward(self, x):
        if not self._calibrated:
            if self.training:
                raise RuntimeError(
                    'QATAdderConv2d: no quantization grid yet; calibrate '
                    'before training (adder_mm.quantization.calibrate_qat, '
                    'or QATCalibrationHook in MMEngine, which tools/train.py '
                    'adds)')
            return super().forward(x)
        lo, scale, qmax = self.grid_lo, self.grid_scale, self.qmax
        # In float32 whatever autocast says: the grid points are the integer
        # layer's values, which float16/bfloat16 would round.
        with _no_autocast(x.device.type):
            bias = None if self.bias is None else self.bias.float()
            y = adder2d(fake_quantize_unchecked(x.float(), lo, scale, qmax),
                        fake_quantize_unchecked(self.weight.float(), lo,
                                                scale, qmax),
                        bias, self.stride, self.padding, self.dilation,
                        self.groups)
        return y.to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A float AdderConv2d's state (no grid): the weights load and the
        # grid is left unset, to be calibrated (fine-tuning from a float
        # checkpoint is how QAT starts). A grid loads with its bits only.
        name = prefix[:-1] or 'QATAdderConv2d'
        keys = [prefix + n for n in self.GRID_KEYS]
        present = [k in state_dict for k in keys]
        if all(present[:2]):
            bits = state_dict[keys[2]] if present[2] else None
            if bits is None:
                raise RuntimeError(
                    f"{name}: the checkpoint's quantization grid has no "
                    'grid_bits (saved before they were stored); delete its '
                    f"'{prefix}grid_lo' and '{prefix}grid_scale' to "
                    'calibrate the grid again')
            if not (isinstance(bits, torch.Tensor) and bits.numel() == 1
                    and int(bits) == self.bits):
                raise RuntimeError(
                    f"{name}: the checkpoint's quantization grid was made "
                    f'for bits={_show(bits)}, this layer has bits='
                    f'{self.bits}; build the model with the bits it was '
                    'trained with')
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.grid_bits.fill_(self.bits)
        if not any(present):
            for key in keys:
                if key in missing_keys:
                    missing_keys.remove(key)
            # Said once per process: every QAT layer of the model loads so.
            warnings.warn(
                'QATAdderConv2d: a float adder checkpoint loaded into '
                'quantization-aware layers, which have no grid now and '
                'compute in float until calibrated (QATCalibrationHook '
                'before training, or adder_mm.quantization.calibrate_qat)')
        if not all(present[:2]):  # none (float), or half a grid (reported)
            self.set_grid(float('nan'), float('nan'))
            return
        try:
            self.set_grid(self.grid_lo, self.grid_scale)
        except ValueError as e:
            raise RuntimeError(f"{name}: the checkpoint's quantization grid "
                               f'is not valid: {e}') from None

    def extra_repr(self):
        return super().extra_repr() + f', bits={self.bits}'


def _no_autocast(device_type):
    """Autocast off on ``device_type`` (nothing to turn off on devices
    without autocast, such as meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _show(bits):
    """A checkpoint's grid_bits, as the error message shows it."""
    if isinstance(bits, torch.Tensor) and bits.numel() == 1:
        return int(bits)
    return repr(bits)
