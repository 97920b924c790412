"""Pure-PyTorch adder2d: the compiled ops' fallback and the tests' oracle.

Computes the formulas of the paper directly on im2col columns, in chunks, so it
never holds the [Cout, K, N*Ho*Wo] temporary of the paper's code in full
(K = Cin/groups * kh * kw).
"""
import torch
import torch.nn.functional as F

# Elements of one broadcast temporary [o, K, p]; 2**22 floats = 16 MiB.
_CHUNK_ELEMS = 1 << 22


def _is_int(i):
    """An int that fits the kernels' int32 geometry (not a bool)."""
    return isinstance(i, int) and not isinstance(i, bool) and \
        -2**31 < i < 2**31


def _pair(v, name, op='adder2d'):
    if _is_int(v):
        return (v, v)
    pair = tuple(v) if isinstance(v, (tuple, list)) else ()
    if len(pair) == 1:
        pair = pair * 2  # then type-checked below like a pair
    if len(pair) != 2 or not all(_is_int(i) for i in pair):
        # (a tuple(v) of 2.0 would have said 'not iterable')
        raise ValueError(f'{op}: {name} must be an int or a pair of ints, '
                         f'got {pair if len(pair) == 2 else v!r} (ints, '
                         'not bools, below 2**31)')
    return pair


def out_size(in_size, k, stride, pad, dil):
    """Output extent along one axis, as for conv2d."""
    return (in_size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _chunks(total, size):
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _columns(x, kernel, stride, padding, dilation, groups):
    """im2col of x, per group: [G, N, K, L] (zero padding included)."""
    n, c = x.shape[:2]
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding,
                    stride=stride)  # [N, C*kh*kw, L]
    return cols.view(n, groups, -1, cols.shape[-1]).transpose(0, 1)


def _chunk_sizes(o, k, p):
    pc = max(1, min(p, _CHUNK_ELEMS // max(1, k)))
    oc = max(1, min(o, _CHUNK_ELEMS // max(1, k * pc)))
    return oc, pc


def forward(x, w, stride, padding, dilation, groups):
    """Y[n,o,h,w] = -sum |X_pad patch - W[o]|: [N, O, Ho, Wo], no bias."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho = out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = out_size(wd, kw, stride[1], padding[1], dilation[1])
    if n == 0 or c == 0:  # empty tensors, or sums of no terms (C = 0): the
        return x.new_zeros(n, o, ho, wo)  # reshapes below cannot infer them
    cols = _columns(x, (kh, kw), stride, padding, dilation, groups)
    og = o // groups
    k = cols.shape[2]
    wg = w.reshape(groups, og, k)
    out = x.new_empty(groups, og, n, ho * wo)
    for g in range(groups):
        xg = cols[g].transpose(0, 1).reshape(k, -1)  # [K, N*L]
        oc, pc = _chunk_sizes(og, k, xg.shape[1])
        for p0, p1 in _chunks(xg.shape[1], pc):
            xs = xg[:, p0:p1].unsqueeze(0)  # [1, K, p]
            for o0, o1 in _chunks(og, oc):
                ws = wg[g, o0:o1].unsqueeze(2)  # [o, K, 1]
                out[g, o0:o1].view(o1 - o0, -1)[:, p0:p1] = \
                    -(xs - ws).abs().sum(1)
    return out.reshape(o, n, ho, wo).transpose(0, 1).contiguous()


def grad_weight(grad_out, x, w, stride, padding, dilation, groups):
    """gW[o,k] = sum_p (X_col[k,p] - W[o,k]) * G[o,p] (padded taps count)."""
    n = x.shape[0]
    if n == 0 or x.shape[1] == 0 or w.shape[0] == 0:
        return torch.zeros_like(w)
    o = w.shape[0]
    og = o // groups
    cols = _columns(x, w.shape[2:], stride, padding, dilation, groups)
    k = cols.shape[2]
    gout = grad_out.reshape(n, groups, og, -1).permute(1, 2, 0, 3)
    gout = gout.reshape(groups, og, -1)  # [G, og, N*L]
    wg = w.reshape(groups, og, k)
    gw = torch.zeros_like(wg)
    for g in range(groups):
        xg = cols[g].transpose(0, 1).reshape(k, -1)
        oc, pc = _chunk_sizes(og, k, xg.shape[1])
        for p0, p1 in _chunks(xg.shape[1], pc):
            xs = xg[:, p0:p1].unsqueeze(0)
            for o0, o1 in _chunks(og, oc):
                diff = xs - wg[g, o0:o1].unsqueeze(2)  # [o, K, p]
                gw[g, o0:o1] += (diff * gout[g, o0:o1, None, p0:p1]).sum(2)
    return gw.reshape(w.shape)


def grad_input(grad_out, x, w, stride, padding, dilation, groups):
    """gX = fold(sum_o clamp(W[o,k] - X_col[k,p], -1, 1) * G[o,p])."""
    n, c, h, wd = x.shape
    if n == 0 or c == 0 or w.shape[0] == 0:
        return torch.zeros_like(x)
    o, _, kh, kw = w.shape
    og = o // groups
    cols = _columns(x, (kh, kw), stride, padding, dilation, groups)
    k, npos = cols.shape[2], cols.shape[3]
    gout = grad_out.reshape(n, groups, og, -1).permute(1, 2, 0, 3)
    gout = gout.reshape(groups, og, -1)
    wg = w.reshape(groups, og, k)
    gcols = x.new_zeros(groups, k, n * npos)
    for g in range(groups):
        xg = cols[g].transpose(0, 1).reshape(k, -1)
        oc, pc = _chunk_sizes(og, k, xg.shape[1])
        for p0, p1 in _chunks(xg.shape[1], pc):
            xs = xg[:, p0:p1].unsqueeze(0)
            for o0, o1 in _chunks(og, oc):
                ht = (wg[g, o0:o1].unsqueeze(2) - xs).clamp_(-1, 1)
                gcols[g, :, p0:p1] += (ht * gout[g, o0:o1, None, p0:p1]).sum(0)
    # [G, K, N, L] -> [N, G*K, L]; fold drops the padded taps.
    gcols = gcols.view(groups, k, n, npos).permute(2, 0, 1, 3).reshape(
        n, -1, npos)
    return F.fold(gcols, (h, wd), (kh, kw), dilation=dilation,
                  padding=padding, stride=stride)


class Adder2dFunction(torch.autograd.Function):
    """adder2d's autograd in Python, every part from the paper's formulas:
    the path without a compiled kernel for the device and dtype (and
    without the extension), and the tests' oracle. (With a compiled kernel,
    adder2d is torch.ops.adder_mm.adder2d, whose autograd is in C++.)

    apply(x, w, bias or None, stride, padding, dilation, groups) with
    checked arguments (stride/padding/dilation pairs)."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups):
        x, w = x.contiguous(), w.contiguous()
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = b is not None
        out = forward(x, w, stride, padding, dilation, groups)
        return out if b is None else out + b.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = grad_input(g, x, w, *ctx.conf)
        if ctx.needs_input_grad[1]:
            gw = grad_weight(g, x, w, *ctx.conf)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None, None, None
