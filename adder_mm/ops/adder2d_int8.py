"""adder2d_int8: the integer adder layer of quantized AdderNets (torch only).

    S[n,o,h,w] = sum_{c in group(o), i, j} |qx_pad[n,c,h*s0+i*d0,w*s1+j*d1]
                                            - qw[o,c,i,j]|

on uint8 input and weight of one quantization grid (padding taps read
``pad_value``, the grid's quantized 0.0). The compiled CPU kernel sums byte
absolute differences with ``vpsadbw`` (AVX-512BW / AVX2) or portable C++;
sums are exact int32, so every path equals the reference bit for bit. With
``out_scale`` the dequantization ``out_bias[o] - out_scale[o] * S`` is fused
into the kernel (one fma, float32 out). No autograd (inference op).
"""
import math
import warnings

import torch
import torch.nn.functional as F

from . import reference
from .checks import check_window_args
from .ext_loader import load_ext

# Largest filter length K = C/groups * kh * kw whose sums fit in int32.
MAX_K = (2**31 - 1) // 255
# Elements of one [o, p, K] int16 temporary of the reference; 2**22 = 8 MiB.
_CHUNK_ELEMS = 1 << 22

_fakes_registered = False


def _register_fake_kernels():
    """Shape-only kernels of torch.ops.adder_mm.adder2d_int8 (and .out), so
    torch.compile and torch.export trace through it without a graph break.
    Output as the CPU kernel makes it: channels_last."""
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True

    @torch.library.register_fake('adder_mm::adder2d_int8')
    def _(qx, qw, stride, padding, dilation, groups, pad_value, out_scale,
          out_bias):
        shape = _out_shape(qx, qw, stride, padding, dilation)
        dtype = torch.int32 if out_scale is None else torch.float32
        return torch.empty(shape, dtype=dtype, device=qx.device,
                           memory_format=torch.channels_last)

    @torch.library.register_fake('adder_mm::adder2d_int8.out')
    def _(qx, qw, stride, padding, dilation, groups, pad_value, out_scale,
          out_bias, *, out):
        return None

    @torch.library.register_fake('adder_mm::quantize_to_grid')
    def _(x, lo, scale, qmax):
        # x's strides where x is dense, else its suggested memory format:
        # what the kernel's contiguous(suggest_memory_format()) gives.
        return torch.empty_like(x, dtype=torch.uint8)


def _load_op():
    """The compiled op's overloads (default, out), or None without the
    extension or with one built before this op existed (then warns: the
    reference runs). Runs at import (see the end of this module)."""
    if load_ext() is None:
        return None
    try:
        op = torch.ops.adder_mm.adder2d_int8
        overloads = (op.default, op.out,
                     torch.ops.adder_mm.quantize_to_grid.default)
    except (AttributeError, RuntimeError) as e:
        warnings.warn(
            'adder2d_int8: adder_mm._ext has no adder2d_int8 kernel (built '
            'from older sources?); using the pure-PyTorch reference. '
            f'Rebuild the extension. ({e})', RuntimeWarning, stacklevel=2)
        return None
    _register_fake_kernels()
    return overloads


def _out_shape(qx, qw, stride, padding, dilation):
    hw = (reference.out_size(qx.shape[2 + i], qw.shape[2 + i],
                             stride[i % len(stride)],
                             padding[i % len(padding)],
                             dilation[i % len(dilation)]) for i in range(2))
    return (qx.shape[0], qw.shape[0], *hw)


def _check_args(qx, qw, stride, padding, dilation, groups, pad_value,
                out_scale, out_bias):
    """Validate adder2d_int8 arguments; returns (stride, padding, dilation)
    pairs. Every message names the argument at fault."""
    stride, padding, dilation = check_window_args(
        'adder2d_int8', qx, qw, stride, padding, dilation, groups,
        names=('qx', 'qw'))
    for name, t in (('qx', qx), ('qw', qw)):
        if t.dtype != torch.uint8:
            raise TypeError(f'adder2d_int8: {name} must be uint8 (quantized '
                            f'bytes), got {t.dtype}')
    if (not isinstance(pad_value, int) or isinstance(pad_value, bool)
            or not 0 <= pad_value <= 255):
        raise ValueError('adder2d_int8: pad_value must be an int in 0..255 '
                         f'(the grid\'s quantized 0.0), got {pad_value!r}')
    o = qw.shape[0]
    k = qw.shape[1] * qw.shape[2] * qw.shape[3]
    if k > MAX_K:
        raise ValueError(
            f'adder2d_int8: filter length K = C/groups x kh x kw = {k} '
            f'exceeds {MAX_K}, above which K * 255 overflows the int32 sums')
    if out_scale is None and out_bias is not None:
        raise ValueError('adder2d_int8: out_bias is given without out_scale')
    for name, t in (('out_scale', out_scale), ('out_bias', out_bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (o, ):
            raise ValueError(
                f'adder2d_int8: {name} must be a tensor of shape ({o},), got '
                f'{tuple(t.shape) if isinstance(t, torch.Tensor) else t!r}')
        if t.dtype != torch.float32:
            raise TypeError(f'adder2d_int8: {name} must be float32, got '
                            f'{t.dtype}')
        if t.device != qx.device:
            raise ValueError(f'adder2d_int8: {name} is on {t.device} but qx '
                             f'is on {qx.device}')
    return stride, padding, dilation


def adder2d_int8(qx, qw, stride=1, padding=0, dilation=1, groups=1,
                 pad_value=0, out_scale=None, out_bias=None):
    """Integer adder layer: sums of byte absolute differences.

    Args:
        qx (Tensor): uint8 [N, C, H, W], any memory format (channels_last
            is the fast path; others are converted inside).
        qw (Tensor): uint8 [O, C/groups, kh, kw] on the grid of qx (stored
            channels_last, its per-call repacking is a plain copy).
        stride, padding, dilation (int or pair): as in F.conv2d.
        groups (int): as in F.conv2d.
        pad_value (int): 0..255, the byte padding taps read (the grid's
            quantized 0.0).
        out_scale (Tensor, optional): float32 [O]; fuses the
            dequantization: the result is ``out_bias - out_scale * S``.
        out_bias (Tensor, optional): float32 [O] (None: 0); only with
            out_scale.

    Returns:
        Tensor: [N, O, Ho, Wo] (Ho, Wo as for conv2d): int32 S >= 0, or
        float32 with out_scale (computed as one fma of float32(S)). The
        compiled CPU kernel returns it channels_last; other devices (the
        reference, also the path without the extension) contiguous.
    """
    stride, padding, dilation = _check_args(qx, qw, stride, padding,
                                            dilation, groups, pad_value,
                                            out_scale, out_bias)
    if _ops is None or qx.device.type not in ('cpu', 'meta'):
        return _reference(qx, qw, stride, padding, dilation, groups,
                          pad_value, out_scale, out_bias)
    return _ops[0](qx, qw, list(stride), list(padding), list(dilation),
                   groups, pad_value, out_scale, out_bias)


def _adder2d_int8_into(out, qx, qw, stride=1, padding=0, dilation=1,
                       groups=1, pad_value=0, out_scale=None, out_bias=None):
    """adder2d_int8 writing into ``out`` (channels_last, int32 or float32,
    the result's shape): for tests that fill ``out`` with a poison value
    first, to see that the kernel writes every element. CPU, compiled."""
    stride, padding, dilation = _check_args(qx, qw, stride, padding,
                                            dilation, groups, pad_value,
                                            out_scale, out_bias)
    if _ops is None:
        raise RuntimeError('adder2d_int8: adder_mm._ext is not built')
    _ops[1](qx, qw, list(stride), list(padding), list(dilation), groups,
            pad_value, out_scale, out_bias, out=out)
    return out


def adder2d_int8_reference(qx, qw, stride=1, padding=0, dilation=1, groups=1,
                           pad_value=0, out_scale=None, out_bias=None):
    """adder2d_int8 in plain PyTorch integer arithmetic, on any device.

    Same arguments and result as :func:`adder2d_int8` (contiguous output).
    Windows of the padded input are a view (``Tensor.unfold``); sums of
    int16 differences in int32, chunked over positions and output channels
    so no temporary exceeds about 8 MiB. The tests' oracle, the fallback
    without the extension and the path on CUDA. With out_scale the result
    is float32(float64(bias) - float64(scale) * float32(S)): equal to the
    kernel's single fma except where the float64 rounding lands exactly on
    a float32 tie (within 1 ulp always).
    """
    stride, padding, dilation = _check_args(qx, qw, stride, padding,
                                            dilation, groups, pad_value,
                                            out_scale, out_bias)
    return _reference(qx, qw, stride, padding, dilation, groups, pad_value,
                      out_scale, out_bias)


def quantize_to_grid(x, lo, scale, qmax):
    """uint8 ``q = clamp(round((x - lo) / scale), 0, qmax)``: the grid point
    ``lo + scale * q`` (q = 0..qmax) nearest to each element of x (ties to
    even), the input of :func:`adder2d_int8`.

    Args:
        x (Tensor): float32, any shape and memory format.
        lo, scale (float): the grid (scale > 0), as float32 values.
        qmax (int): 1..255, the largest code (2^bits - 1).

    Returns:
        Tensor: uint8, x's shape (channels_last kept). The compiled CPU
        kernel does it in one pass (NaN gives 0); elsewhere the same float32
        formula in PyTorch ops gives the same bytes.
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError('quantize_to_grid: x must be a float32 tensor, got '
                        f'{getattr(x, "dtype", type(x).__name__)}')
    lo, scale = check_grid('quantize_to_grid', lo, scale, qmax)
    if _ops is not None and x.device.type in ('cpu', 'meta'):
        return _ops[2](x, lo, scale, int(qmax))
    return quantize_to_grid_reference(x, lo, scale, qmax)


def check_grid(op, lo, scale, qmax):
    """(lo, scale) as the float32 values the kernels use (returned as Python
    floats), or a ValueError naming ``op``."""
    if isinstance(qmax, bool) or not isinstance(qmax, int) or \
            not 1 <= qmax <= 255:
        raise ValueError(f'{op}: qmax must be in 1..255 (an int), got '
                         f'{qmax!r}')
    try:
        lo32, scale32 = (float(torch.tensor(float(v), dtype=torch.float32))
                         for v in (lo, scale))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f'{op}: lo and scale must be numbers, got lo={lo!r}, '
                         f'scale={scale!r} ({e})') from None
    if not (scale32 > 0 and math.isfinite(scale32) and math.isfinite(lo32)):
        raise ValueError(f'{op}: scale must be positive and finite in '
                         f'float32, lo finite; got lo={lo}, scale={scale}')
    return lo32, scale32


def quantize_to_grid_reference(x, lo, scale, qmax):
    """quantize_to_grid in PyTorch ops (the tests' oracle)."""
    return _grid_codes(x, lo, scale, qmax).to(torch.uint8)


def _grid_codes(x, lo, scale, qmax):
    """The codes ``clamp(round((x - lo) / scale), 0, qmax)`` as floats of
    x's dtype: the one formula of quantize_to_grid and its fake twin."""
    if not isinstance(lo, torch.Tensor):
        lo, scale = float(lo), float(scale)
    return torch.round((x - lo) / scale).clamp_(0, int(qmax))


def fake_quantize_to_grid(x, lo, scale, qmax):
    """x replaced by its grid point ``lo + scale * q`` (q as
    :func:`quantize_to_grid` gives it), with the straight-through gradient
    of quantization-aware training: 1 where lo <= x <= lo + scale * qmax
    (edges included), 0 outside, where the code saturates.

    Args:
        x (Tensor): floating point, any shape; computed in float32 (the
            integer layer's arithmetic) and returned in x's dtype.
        lo, scale (float): the grid (scale > 0, both finite).
        qmax (int): 1..255, the largest code (2^bits - 1).

    Returns:
        Tensor: x's shape and dtype.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError('fake_quantize_to_grid: x must be a floating point '
                        f'tensor, got {getattr(x, "dtype", type(x).__name__)}')
    lo, scale = check_grid('fake_quantize_to_grid', lo, scale, qmax)
    return fake_quantize_unchecked(x, lo, scale, qmax)


def fake_quantize_unchecked(x, lo, scale, qmax):
    """fake_quantize_to_grid without its checks; lo and scale may also be
    0-dim float32 tensors on x's device (no host synchronisation)."""
    x32 = x.float()
    with torch.no_grad():
        snapped = _grid_codes(x32, lo, scale, qmax) * scale + lo
        keep = (x32 >= lo) & (x32 <= lo + scale * qmax)
    # snapped in value (x32 - x32 is 0, and inf is outside); gradient 1 on
    # [lo, hi] edges included, 0 outside (where the integer code saturates).
    return (snapped + torch.where(keep, x32 - x32.detach(), 0.)).to(x.dtype)


def _blocks(n, ho, wo, k, budget):
    """Slices (images, rows, columns) of the output positions, in order,
    each with at most max(1, budget // k) positions (whole images or whole
    rows where they fit)."""
    per = max(1, budget // max(1, k))
    if ho * wo <= per:
        step = per // (ho * wo)
        for n0 in range(0, n, step):
            yield slice(n0, min(n, n0 + step)), slice(0, ho), slice(0, wo)
    elif wo <= per:
        step = per // wo
        for i in range(n):
            for r0 in range(0, ho, step):
                yield slice(i, i + 1), slice(r0, min(ho, r0 + step)), \
                    slice(0, wo)
    else:
        for i in range(n):
            for r in range(ho):
                for c0 in range(0, wo, per):
                    yield slice(i, i + 1), slice(r, r + 1), \
                        slice(c0, min(wo, c0 + per))


def _reference(qx, qw, stride, padding, dilation, groups, pad_value,
               out_scale, out_bias):
    s = _sums(qx, qw, stride, padding, dilation, groups, pad_value)
    if out_scale is None:
        return s
    # float32(S) as the kernel converts it, then the affine map in float64.
    bias = (torch.zeros_like(out_scale) if out_bias is None else out_bias)
    r = (bias.double().view(1, -1, 1, 1) -
         out_scale.double().view(1, -1, 1, 1) * s.float().double())
    return r.float()


def _sums(qx, qw, stride, padding, dilation, groups, pad_value):
    n, c, _, _ = qx.shape
    o, cg, kh, kw = qw.shape
    ho, wo = _out_shape(qx, qw, stride, padding, dilation)[2:]
    out = torch.empty((n, o, ho, wo), dtype=torch.int32, device=qx.device)
    if out.numel() == 0:
        return out
    if cg == 0:  # no input channels: empty sums
        return out.zero_()
    xp = F.pad(qx, (padding[1], padding[1], padding[0], padding[0]),
               value=pad_value)
    span_h = dilation[0] * (kh - 1) + 1
    span_w = dilation[1] * (kw - 1) + 1
    # [N, C, Ho, Wo, kh, kw] view: the window of every output position.
    win = xp.unfold(2, span_h, stride[0]).unfold(3, span_w, stride[1])
    win = win[..., ::dilation[0], ::dilation[1]]
    og, k = o // groups, cg * kh * kw
    for g in range(groups):
        wg = qw[g * og:(g + 1) * og].reshape(og, k).to(torch.int16)
        xg = win[:, g * cg:(g + 1) * cg]
        for bn, br, bc in _blocks(n, ho, wo, k, _CHUNK_ELEMS):
            # [P, K] in (c, i, j) order, as the weight rows
            xs = xg[bn, :, br, bc].permute(0, 2, 3, 1, 4, 5)
            shape = xs.shape[:3]
            xs = xs.reshape(-1, k).to(torch.int16)
            oc = max(1, min(og, _CHUNK_ELEMS // (xs.shape[0] * k)))
            for o0 in range(0, og, oc):
                o1 = min(og, o0 + oc)
                d = (xs.unsqueeze(0) - wg[o0:o1].unsqueeze(1)).abs_()
                sums = d.sum(2, dtype=torch.int32)  # [o, P]
                out[bn, g * og + o0:g * og + o1, br, bc] = \
                    sums.view(o1 - o0, *shape).permute(1, 0, 2, 3)
    return out


_ops = _load_op()
