"""AdderConv2d: the AdderNet layer as a drop-in for nn.Conv2d."""
import torch
import torch.nn as nn
from torch.nn.modules.utils import _pair

from adder_mm.ops import adder2d
from adder_mm.utils.registry import register_model


def set_window_geometry(module, in_channels, out_channels, kernel_size,
                        stride, padding, dilation, groups):
    """Check and set the nn.Conv2d-style geometry attributes of an adder
    layer (in/out_channels, kernel_size, stride, padding, dilation as
    pairs, groups); errors name the layer's class."""
    name = type(module).__name__
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(
            f'{name}: groups={groups} must divide in_channels '
            f'({in_channels}) and out_channels ({out_channels})')
    if isinstance(padding, str):
        raise ValueError(f'{name}: string padding is not supported; pass '
                         'an int or a pair')
    module.in_channels = in_channels
    module.out_channels = out_channels
    module.kernel_size = _pair(kernel_size)
    module.stride = _pair(stride)
    module.padding = _pair(padding)
    module.dilation = _pair(dilation)
    module.groups = groups


def apply_keeping_float32(module, apply, names):
    """Run ``apply()`` (a module's ``_apply``: ``.to()``, ``.half()``,
    ``.cuda()``, ...) but keep the named buffers float32 with their exact
    values (moved to the new device): integer grids and scales, which the
    integer arithmetic reads in float32 whatever the model's dtype."""
    saved = {name: getattr(module, name) for name in names}
    apply()
    for name, old in saved.items():
        new = getattr(module, name)
        if new.dtype != torch.float32:  # a cast rounded them: restore
            setattr(module, name, old.to(device=new.device,
                                         dtype=torch.float32))
    return module


@register_model('Adder')
class AdderConv2d(nn.Module):
    """Negative L1 distance between each filter and each input patch.

    Same arguments as ``nn.Conv2d`` (no padding_mode: zero padding only, which
    takes part in the distance as in the paper's code). Needs torch alone;
    where MMEngine is installed it is registered in MMEngine's root MODELS
    as ``AdderConv2d`` and ``Adder`` so that ``conv_cfg=dict(type='Adder')``
    works in mmcv's ``build_conv_layer``.

    Shapes: input [N, in_channels, H, W] -> output [N, out_channels, Ho, Wo],
    with Ho, Wo as for nn.Conv2d. ``weight``: [out_channels,
    in_channels // groups, kh, kw], initialised standard normal (paper's code).
    """

    def __init__(self,
                 in_channels,
                 out_channels,
                 kernel_size,
                 stride=1,
                 padding=0,
                 dilation=1,
                 groups=1,
                 bias=False,
                 device=None,
                 dtype=None):
        super().__init__()
        set_window_geometry(self, in_channels, out_channels, kernel_size,
                            stride, padding, dilation, groups)
        # Read by mmcv's ConvModule and other conv-introspecting code.
        self.transposed = False
        self.output_padding = (0, 0)
        self.padding_mode = 'zeros'
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups,
                        *self.kernel_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter('bias', None)
        self.reset_parameters()

    def reset_parameters(self):
        """Standard normal weights and zero bias, as in the paper's code."""
        nn.init.normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def init_weights(self):
        """Re-apply the paper's init.

        Having ``init_weights`` tells mmcv's ConvModule (and MMEngine's
        BaseModule) to leave this layer to its own init instead of the Kaiming
        init meant for multiplication convs. A Pretrained init_cfg or a
        loaded checkpoint still overrides it, as they run later.
        """
        self.reset_parameters()

    def forward(self, x):
        return adder2d(x, self.weight, self.bias, self.stride, self.padding,
                       self.dilation, self.groups)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A quantized layer's state (QuantAdderConv2d: qweight, scale, ...)
        # in a float model: a non-strict load (MMEngine's load_checkpoint,
        # MMPretrain's init_model) kept the random weights with a warning.
        if prefix + 'qweight' in state_dict:
            raise RuntimeError(
                f'{prefix[:-1] or "AdderConv2d"}: the state dict holds a '
                'quantized adder layer (qweight): a quantized checkpoint '
                '(tools/quantize.py) loads only into a model with quantized '
                'layers; use adder_mm.quantization.load_quantized_checkpoint'
                '(model, path), or tools/test.py')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        s = (f'{self.in_channels}, {self.out_channels}, '
             f'kernel_size={self.kernel_size}, stride={self.stride}')
        if self.padding != (0, 0):
            s += f', padding={self.padding}'
        if self.dilation != (1, 1):
            s += f', dilation={self.dilation}'
        if self.groups != 1:
            s += f', groups={self.groups}'
        if self.bias is None:
            s += ', bias=False'
        return s
