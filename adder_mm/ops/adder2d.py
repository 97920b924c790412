"""adder2d: the AdderNet layer as a functional op with autograd (torch only).

    Y[n,o,h,w] = -sum_{c in group(o), i, j}
                     |X_pad[n,c,h*s0+i*d0,w*s1+j*d1] - W[o,c,i,j]| + bias[o]

Zero padding takes part (a padded tap adds |W|). Backward follows the paper:
the full-precision filter gradient (X - W) and the HardTanh input gradient
clamp(W - X, -1, 1); no adaptive scaling here (that is the optimizer's job).
"""
import warnings

import torch

from . import reference
from .checks import check_window_args
from .ext_loader import load_ext

# dtypes each device's compiled kernels accept; others use the reference.
_EXT_DTYPES = {
    'cpu': (torch.float32, torch.float64),
    'cuda': (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
_warned_dtypes = set()


_ext_cuda = False  # cached ext.with_cuda(): torch.compile cannot trace it
_ops = None  # OpOverloads, see _register_fake_kernels


def _load_ops():
    """Load the extension once; register the fake kernels and cache
    with_cuda() with it. Runs at import, so that a first adder2d call inside
    torch.compile traces only reads of these globals."""
    global _ext_cuda, _ops
    ext = load_ext()
    if ext is not None and _ops is None:
        _ops = _register_fake_kernels()
        _ext_cuda = bool(ext.with_cuda())
    return ext


def _ops_for(x):
    """The compiled ops if the extension has a kernel for x's device and
    dtype (on meta tensors: its fake kernels), else None (the caller uses
    the reference, which on meta tensors still loops over its chunks)."""
    if _load_ops() is None:
        return None
    dev = x.device.type
    if dev == 'meta':  # the fake kernels: shapes only, any dtype
        return _ops
    if dev == 'cuda' and not _ext_cuda:
        return None
    if x.dtype not in _EXT_DTYPES.get(dev, ()):
        key = (dev, x.dtype)
        if key not in _warned_dtypes:
            _warned_dtypes.add(key)
            warnings.warn(
                f'adder2d: no compiled {dev} kernel for {x.dtype}; using the '
                'pure-PyTorch reference (slow)', RuntimeWarning, stacklevel=3)
        return None
    return _ops


def _register_fake_kernels():
    """Shape-only kernels of the extension's ops (torch.ops.adder_mm.*, which
    loading adder_mm._ext defines), so torch.compile and torch.export trace
    through adder2d without a graph break. Returns the OpOverloads
    (adder2d with autograd, forward, backward_input, backward_weight)."""
    ops = torch.ops.adder_mm

    def forward_fake(x, w, b, stride, padding, dilation, groups):
        oh, ow = (reference.out_size(x.shape[2 + i], w.shape[2 + i],
                                     stride[i % len(stride)],
                                     padding[i % len(padding)],
                                     dilation[i % len(dilation)])
                  for i in range(2))
        return x.new_empty((x.shape[0], w.shape[0], oh, ow))

    torch.library.register_fake('adder_mm::adder2d', forward_fake)
    torch.library.register_fake('adder_mm::adder2d_forward', forward_fake)

    @torch.library.register_fake('adder_mm::adder2d_backward_input')
    def _(g, x, w, stride, padding, dilation, groups):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake('adder_mm::adder2d_backward_weight')
    def _(g, x, w, stride, padding, dilation, groups):
        return (torch.empty_like(w, memory_format=torch.contiguous_format),
                g.new_empty((w.shape[0], )))

    return (ops.adder2d.default, ops.adder2d_forward.default,
            ops.adder2d_backward_input.default,
            ops.adder2d_backward_weight.default)


def _check_args(x, w, b, stride, padding, dilation, groups):
    """Validate adder2d arguments; returns (stride, padding, dilation)
    pairs."""
    stride, padding, dilation = check_window_args(
        'adder2d', x, w, stride, padding, dilation, groups)
    if not x.is_floating_point() or not w.is_floating_point():
        raise TypeError('adder2d: input and weight must be floating point, '
                        f'got {x.dtype} and {w.dtype}')
    if x.dtype != w.dtype:
        raise TypeError(f'adder2d: input dtype {x.dtype} does not match '
                        f'weight dtype {w.dtype}')
    o = w.shape[0]
    if b is not None:
        if not isinstance(b, torch.Tensor) or b.shape != (o, ):
            raise ValueError(f'adder2d: bias must be a tensor of shape ({o},)'
                             f', got {getattr(b, "shape", type(b).__name__)}')
        if b.dtype != x.dtype or b.device != x.device:
            raise TypeError('adder2d: bias must have the dtype and device of '
                            f'the input ({x.dtype}, {x.device}), got '
                            f'{b.dtype}, {b.device}')
    return stride, padding, dilation


def _unbatched(x):
    """[C, H, W]: one image without its batch dimension."""
    return isinstance(x, torch.Tensor) and x.dim() == 3


# What autocast casts: conv2d leaves float64 (and non-floats) as they are.
_AUTOCAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _autocast(x, w, b):
    """Cast like conv2d under autocast (CPU kernels compute in float32);
    anything else, non-tensors included, is left to _check_args."""
    dev = getattr(x, 'device', torch.device('cpu')).type  # _check_args types
    if dev not in ('cpu', 'cuda') or not torch.is_autocast_enabled(dev):
        return x, w, b, False
    dtype = torch.get_autocast_dtype(dev) if dev == 'cuda' else torch.float32
    cast = [t.to(dtype) if isinstance(t, torch.Tensor)
            and t.dtype in _AUTOCAST_DTYPES else t for t in (x, w, b)]
    return cast[0], cast[1], cast[2], True


def adder2d(input, weight, bias=None, stride=1, padding=0, dilation=1,
            groups=1):
    """AdderNet 2-D layer: negative L1 distance of each filter to each patch.

    Args:
        input (Tensor): [N, C, H, W], floating point; or [C, H, W]
            (unbatched, as F.conv2d takes it).
        weight (Tensor): [O, C/groups, kh, kw], same dtype and device.
        bias (Tensor, optional): [O].
        stride, padding, dilation (int or pair): as in F.conv2d.
        groups (int): as in F.conv2d.

    Returns:
        Tensor: [N, O, Ho, Wo] in the input dtype (Ho, Wo as for conv2d);
        [O, Ho, Wo] for an unbatched input.
    """
    if _unbatched(input):
        return adder2d(input.unsqueeze(0), weight, bias, stride, padding,
                       dilation, groups).squeeze(0)
    input, weight, bias, autocast = _autocast(input, weight, bias)
    stride, padding, dilation = _check_args(input, weight, bias, stride,
                                            padding, dilation, groups)
    channels_last = (
        input.dim() == 4 and not input.is_contiguous()
        and input.is_contiguous(memory_format=torch.channels_last))
    ops = _ops_for(input)
    layer = reference.Adder2dFunction.apply if ops is None else ops[0]
    if autocast:
        with torch.autocast(input.device.type, enabled=False):
            out = layer(input, weight, bias, stride, padding, dilation,
                        groups)
    else:
        out = layer(input, weight, bias, stride, padding, dilation, groups)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def adder2d_reference(input, weight, bias=None, stride=1, padding=0,
                      dilation=1, groups=1):
    """adder2d in plain PyTorch, gradients from the paper's formulas.

    Same arguments and result as :func:`adder2d`; chunked so it never holds a
    [O, K, N*Ho*Wo] temporary in full. adder2d's fallback (the same
    autograd Function) and the tests' oracle.
    """
    if _unbatched(input):
        return adder2d_reference(input.unsqueeze(0), weight, bias, stride,
                                 padding, dilation, groups).squeeze(0)
    stride, padding, dilation = _check_args(input, weight, bias, stride,
                                            padding, dilation, groups)
    return reference.Adder2dFunction.apply(input, weight, bias, stride,
                                           padding, dilation, groups)


_load_ops()
