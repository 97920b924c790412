"""The argument checks every adder op shares, written once: tensors, shapes,
device and the window geometry. Each op adds the checks of its own
arguments (dtypes, bias, quantization grid). Messages name the op and the
argument at fault."""
import torch

from .reference import _pair


def check_window_args(op, x, w, stride, padding, dilation, groups,
                      names=('input', 'weight')):
    """Validate an adder op's input ``x`` [N, C, H, W] and weight ``w``
    [O, C/groups, kh, kw] and its geometry; returns (stride, padding,
    dilation) as pairs."""
    xn, wn = names
    for name, t in ((xn, x), (wn, w)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{op}: {name} must be a torch.Tensor, got '
                            f'{type(t).__name__}')
    if x.dim() != 4:
        raise ValueError(f'{op}: {xn} must be 4-D [N, C, H, W], got shape '
                         f'{tuple(x.shape)}')
    if w.dim() != 4:
        raise ValueError(f'{op}: {wn} must be 4-D [O, C/groups, kh, kw], '
                         f'got shape {tuple(w.shape)}')
    if x.device != w.device:
        raise ValueError(f'{op}: {xn} is on {x.device} but {wn} is on '
                         f'{w.device}')
    stride = _pair(stride, 'stride', op)
    padding = _pair(padding, 'padding', op)
    dilation = _pair(dilation, 'dilation', op)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f'{op}: groups must be a positive int, got '
                         f'{groups!r}')
    if min(stride) < 1:
        raise ValueError(f'{op}: stride must be positive, got {stride}')
    if min(dilation) < 1:
        raise ValueError(f'{op}: dilation must be positive, got {dilation}')
    if min(padding) < 0:
        raise ValueError(f'{op}: padding must be non-negative, got '
                         f'{padding}')
    c, o = x.shape[1], w.shape[0]
    if c % groups or o % groups:
        raise ValueError(f'{op}: groups={groups} must divide both input '
                         f'channels ({c}) and output channels ({o})')
    if w.shape[1] * groups != c:
        raise ValueError(
            f'{op}: {xn} has {c} channels but {wn} expects '
            f'{w.shape[1] * groups} ({wn}.shape[1]={w.shape[1]} x '
            f'groups={groups})')
    kh, kw = w.shape[2:]
    if kh < 1 or kw < 1:
        raise ValueError(f'{op}: empty kernel {(kh, kw)}')
    span_h = dilation[0] * (kh - 1) + 1
    span_w = dilation[1] * (kw - 1) + 1
    ph, pw = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
    if span_h > ph or span_w > pw:
        raise ValueError(
            f'{op}: kernel {kh}x{kw} (dilated extent {span_h}x{span_w}) is '
            f'larger than the padded input {ph}x{pw}')
    return stride, padding, dilation
