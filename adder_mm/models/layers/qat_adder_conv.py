"""QATAdderConv2d: an adder layer trained for integer inference."""
import torch

from adder_mm.ops import adder2d
from adder_mm.ops.adder2d_int8 import fake_quantize_unchecked
from adder_mm.utils.registry import register_model

from .adder_conv import AdderConv2d

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
    shared grid of post-training quantization), and it then stays fixed;
    ``QATCalibrationHook`` does that before training in MMEngine. A float
    AdderNet checkpoint loads into this layer (the grid is then unset, and
    calibrated again); a trained one carries its grid, and
    ``quantize_model`` converts it to integers on that grid.

    Without a grid the layer computes in float in eval mode (operation
    counting, calibration itself) and refuses to train.

    Buffers: grid_lo, grid_scale float32 [] (NaN until calibrated).
    Shapes: as AdderConv2d.
    """

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
        # Mirrors isfinite(grid_scale), so that forward needs no host sync.
        self._calibrated = False

    @property
    def qmax(self):
        return (1 << self.bits) - 1

    @property
    def calibrated(self):
        return self._calibrated

    def set_grid(self, lo, scale):
        """Fix the grid (``lo`` finite, ``scale`` > 0), or unset it with
        ``set_grid(nan, nan)``."""
        lo, scale = float(lo), float(scale)
        unset = lo != lo and scale != scale
        if not unset and not (torch.isfinite(torch.tensor([lo, scale])).all()
                              and scale > 0):
            raise ValueError('QATAdderConv2d: the grid needs a finite lo and '
                             f'a positive finite scale, got lo={lo}, '
                             f'scale={scale}')
        self.grid_lo.fill_(lo)
        self.grid_scale.fill_(scale)
        self._calibrated = not unset

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
        lo, scale = self.grid_lo.float(), self.grid_scale.float()
        return adder2d(fake_quantize_unchecked(x, lo, scale, self.qmax),
                       fake_quantize_unchecked(self.weight, lo, scale,
                                               self.qmax),
                       self.bias, self.stride, self.padding, self.dilation,
                       self.groups)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A float AdderConv2d's state (no grid): the weights load and the
        # grid is left unset, to be calibrated (fine-tuning from a float
        # checkpoint is how QAT starts).
        absent = [prefix + n for n in _GRID if prefix + n not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if len(absent) == len(_GRID):
            for key in absent:
                if key in missing_keys:
                    missing_keys.remove(key)
            self.set_grid(float('nan'), float('nan'))
        elif not absent:
            self._calibrated = bool(torch.isfinite(self.grid_lo)
                                    and torch.isfinite(self.grid_scale)
                                    and self.grid_scale > 0)

    def extra_repr(self):
        return super().extra_repr() + f', bits={self.bits}'
