"""Tests of the adder2d op layer (torch + adder_mm.ops only).

An independent float64 oracle, written here from the formulas of the paper
(shared/PAPER.md), checks the reference; the reference then checks the
compiled kernels on random shapes (hypothesis).
"""
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from adder_mm.ops import (
    adder2d,
    adder2d_reference,
    ext_info,
    ext_loader,
    reference,
)

HAS_EXT = ext_info()['cpu']
needs_ext = pytest.mark.skipif(
    not HAS_EXT, reason='adder_mm._ext is not built (compiled-kernel tests)')


# ---------------------------------------------------------------- the oracle
def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def oracle(x, w, b, g, stride=1, padding=0, dilation=1, groups=1):
    """Forward and the three paper gradients, one kernel tap at a time.

    Written straight from the formulas (no unfold/fold):
    Y = -sum |X_pad - W| + b, gW = sum (X_pad - W) G,
    gX = sum clamp(W - X, -1, 1) G over every output reading the pixel,
    gb = sum G. ``g`` is the upstream gradient [N, O, Ho, Wo].
    Returns (y, gx, gw, gb) in float64.
    """
    x, w, g = x.double(), w.double(), g.double()
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    dh, dw = _pair(dilation)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph))
    y = x.new_zeros(n, o, ho, wo)
    gw = torch.zeros_like(w)
    gxp = torch.zeros_like(xp)
    for grp in range(groups):
        cs = slice(grp * cg, (grp + 1) * cg)
        os_ = slice(grp * og, (grp + 1) * og)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
                xs = xp[:, cs, rows, cols]  # [N, cg, Ho, Wo]
                wt = w[os_, :, i, j]  # [og, cg]
                diff = xs[:, None] - wt[None, :, :, None, None]  # N,og,cg,.,.
                gg = g[:, os_, None]  # [N, og, 1, Ho, Wo]
                y[:, os_] -= diff.abs().sum(2)
                gw[os_, :, i, j] += (diff * gg).sum((0, 3, 4))
                gxp[:, cs, rows, cols] += ((-diff).clamp(-1, 1) * gg).sum(1)
    gb = None
    if b is not None:
        y = y + b.double().view(1, -1, 1, 1)
        gb = g.sum((0, 2, 3))
    gx = gxp[:, :, ph:ph + h, pw:pw + wd]
    return y, gx, gw, gb


def run_op(fn, x, w, b, g, **conf):
    """Forward + backward of ``fn`` with upstream gradient g."""
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    if b is not None:
        b = b.detach().clone().requires_grad_()
    y = fn(x, w, b, **conf)
    y.backward(g)
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


def make_case(n, c, o, h, wd, kh, kw, groups, bias, dtype, seed=0,
              **conf):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, wd, generator=gen, dtype=torch.float64)
    w = torch.randn(o, c // groups, kh, kw, generator=gen, dtype=torch.float64)
    # Small weights and inputs of similar scale put many taps inside the
    # HardTanh's linear band and many outside, so both branches are tested.
    w = w * 0.8
    b = torch.randn(o, generator=gen, dtype=torch.float64) if bias else None
    y = adder2d_reference(x, w, b, groups=groups, **conf)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    return tuple(None if t is None else t.to(dtype) for t in (x, w, b, g))


def assert_grads_close(got, want, rtol, atol, what=''):
    names = ('output', 'grad_input', 'grad_weight', 'grad_bias')
    for name, a, e in zip(names, got, want):
        if e is None:
            assert a is None, f'{what}: unexpected {name}'
            continue
        torch.testing.assert_close(
            a.double(), e.double(), rtol=rtol, atol=atol,
            msg=lambda m: f'{what} {name}: {m}')


# ------------------------------------------------------- oracle and reference
ORACLE_CASES = [
    # n, c, o, h, w, kh, kw, groups, bias, stride, padding, dilation
    (2, 3, 4, 5, 6, 3, 3, 1, False, 1, 1, 1),
    (1, 4, 6, 7, 5, 3, 2, 2, True, (2, 1), (1, 0), (1, 2)),
    (3, 6, 3, 6, 6, 1, 1, 3, False, 2, 0, 1),
    (1, 2, 2, 4, 4, 2, 3, 1, True, 1, (2, 1), 2),
]


@pytest.mark.parametrize('case', ORACLE_CASES)
def test_reference_matches_oracle(case):
    n, c, o, h, wd, kh, kw, groups, bias, s, p, d = case
    conf = dict(stride=s, padding=p, dilation=d, groups=groups)
    x, w, b, g = make_case(n, c, o, h, wd, kh, kw, groups, bias,
                           torch.float64, stride=s, padding=p, dilation=d)
    want = oracle(x, w, b, g, **conf)
    got = run_op(adder2d_reference, x, w, b, g, **conf)
    assert_grads_close(got, want, 1e-12, 1e-12, 'reference vs oracle')
    if HAS_EXT:
        got = run_op(adder2d, x, w, b, g, **conf)
        assert_grads_close(got, want, 1e-12, 1e-11, 'adder2d vs oracle')


def test_oracle_by_hand_one_pixel_with_padding():
    """1x1 input, 3x3 kernel, padding 1: eight taps read zero padding."""
    x = torch.tensor([[[[0.7]]]], dtype=torch.float64)
    w = torch.tensor([[[[0.5, -2.0, 0.25], [1.5, -0.3, 3.0],
                        [-0.5, 0.75, -1.25]]]], dtype=torch.float64)
    pads = 0.5 + 2.0 + 0.25 + 1.5 + 3.0 + 0.5 + 0.75 + 1.25  # sum |W| on pads
    want_y = -(pads + abs(0.7 - (-0.3)))
    g = torch.tensor([[[[2.0]]]], dtype=torch.float64)
    # gW = (X_pad - W) * G: -W * G on the pads, (0.7 - W) * G at the centre.
    want_gw = -w * 2.0
    want_gw[0, 0, 1, 1] = (0.7 - (-0.3)) * 2.0
    # gX: only the centre tap reads the real pixel: clamp(-0.3 - 0.7) * G.
    want_gx = torch.tensor([[[[-1.0 * 2.0]]]], dtype=torch.float64)
    y, gx, gw, _ = oracle(x, w, None, g, padding=1)
    for fn in (None, adder2d_reference, adder2d):
        if fn is not None:
            y, gx, gw, _ = run_op(fn, x, w, None, g, padding=1)
        assert y.shape == (1, 1, 1, 1)
        assert y.item() == pytest.approx(want_y, abs=1e-12)
        torch.testing.assert_close(gw, want_gw, rtol=0, atol=1e-12)
        torch.testing.assert_close(gx, want_gx, rtol=0, atol=1e-12)


def test_hardtanh_inside_band_and_grad_bias():
    """|W - X| < 1 gives the unclipped W - X; bias gradient is sum of G."""
    x = torch.tensor([[[[0.2, -0.1]]]], dtype=torch.float64)
    w = torch.tensor([[[[0.5]]], [[[-0.4]]]], dtype=torch.float64)
    b = torch.tensor([0.3, -0.6], dtype=torch.float64)
    g = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]], dtype=torch.float64)
    y, gx, gw, gb = run_op(adder2d, x, w, b, g)
    torch.testing.assert_close(
        y, torch.tensor([[[[-0.3 + 0.3, -0.6 + 0.3]],
                          [[-0.6 - 0.6, -0.3 - 0.6]]]], dtype=torch.float64))
    # gX[p] = (0.5 - x) * g0 + (-0.4 - x) * g1
    torch.testing.assert_close(
        gx, torch.tensor([[[[0.3 * 1 + -0.6 * 3, 0.6 * 2 + -0.3 * -1]]]],
                         dtype=torch.float64))
    torch.testing.assert_close(
        gw.flatten(), torch.tensor([(0.2 - 0.5) * 1 + (-0.1 - 0.5) * 2,
                                    (0.2 + 0.4) * 3 + (-0.1 + 0.4) * -1],
                                   dtype=torch.float64))
    torch.testing.assert_close(gb, torch.tensor([3.0, 2.0],
                                                dtype=torch.float64))


# -------------------------------------------- property-based kernel parity
@st.composite
def shapes(draw):
    groups = draw(st.integers(1, 3))
    cg = draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    # Smallest input whose padded extent holds the dilated kernel, plus odd
    # or even extra rows/columns.
    h = max(1, span[0] - 2 * padding[0]) + draw(st.integers(0, 5))
    wd = max(1, span[1] - 2 * padding[1]) + draw(st.integers(0, 5))
    return dict(n=draw(st.integers(1, 3)), c=groups * cg, o=groups * og,
                h=h, wd=wd, kh=kh, kw=kw, groups=groups,
                bias=draw(st.booleans()), stride=stride, padding=padding,
                dilation=dilation, seed=draw(st.integers(0, 2**16)))


def _parity(case, dtype):
    case = dict(case)
    conf = {k: case.pop(k) for k in ('stride', 'padding', 'dilation')}
    x, w, b, g = make_case(dtype=dtype, **case, **conf)
    conf['groups'] = case['groups']
    got = run_op(adder2d, x, w, b, g, **conf)
    want = run_op(adder2d_reference, x.double(), w.double(),
                  None if b is None else b.double(), g.double(), **conf)
    return got, want, case


@needs_ext
@settings(max_examples=60, deadline=None, derandomize=True)
@given(case=shapes())
def test_parity_float64(case):
    got, want, _ = _parity(case, torch.float64)
    assert_grads_close(got, want, 1e-10, 1e-10, f'float64 {case}')


@needs_ext
@settings(max_examples=60, deadline=None, derandomize=True)
@given(case=shapes())
def test_parity_float32(case):
    got, want, c = _parity(case, torch.float32)
    assert all(t.dtype == torch.float32 for t in got if t is not None)
    # Terms summed per output: K = C/groups*kh*kw for the forward, about
    # N*Ho*Wo for grad_weight; fp32 rounding grows with both.
    y = want[0]
    k = c['c'] // c['groups'] * c['kh'] * c['kw']
    terms = k + y[0, 0].numel() * c['n']
    assert_grads_close(got, want, 1e-5, 2e-6 * terms, f'float32 {case}')


# ------------------------------------------------------------- bad input
def _xw(**kw):
    x = torch.randn(kw.get('xs', (1, 4, 5, 5))) * 3
    w = torch.randn(kw.get('ws', (2, 4, 3, 3))) * 3
    return (x.to(kw.get('xd', torch.float32)),
            w.to(kw.get('wd', torch.float32)))


BAD_INPUTS = [
    ('2-D input', dict(xs=(5, 5)), {}, ValueError, 'input must be 4-D'),
    ('5-D input', dict(xs=(1, 1, 4, 5, 5)), {}, ValueError,
     'input must be 4-D'),
    ('unbatched channels', dict(xs=(5, 5, 5)), {}, ValueError,
     'input has 5 channels but weight expects 4'),
    ('5-D weight', dict(ws=(2, 4, 3, 3, 1)), {}, ValueError,
     'weight must be 4-D'),
    ('channels vs weight', dict(xs=(1, 5, 5, 5)), {}, ValueError,
     'input has 5 channels but weight expects 4'),
    ('groups vs channels', dict(xs=(1, 3, 5, 5), ws=(2, 1, 3, 3)),
     dict(groups=2), ValueError, r'groups=2 must divide.*\(3\)'),
    ('groups vs out channels', dict(xs=(1, 4, 5, 5), ws=(3, 2, 3, 3)),
     dict(groups=2), ValueError, r'groups=2 must divide.*\(3\)'),
    ('dtype mismatch', dict(wd=torch.float64), {}, TypeError,
     'input dtype torch.float32 does not match weight dtype torch.float64'),
    ('integer tensors', dict(xd=torch.int64, wd=torch.int64), {}, TypeError,
     'floating point'),
    ('empty kernel', dict(ws=(2, 4, 0, 3)), {}, ValueError,
     r'empty kernel \(0, 3\)'),
    ('kernel > padded input', dict(xs=(1, 4, 2, 2)), {}, ValueError,
     'larger than the padded input 2x2'),
    ('dilated kernel > padded input', dict(xs=(1, 4, 4, 4)),
     dict(dilation=2, padding=0), ValueError, 'dilated extent 5x5'),
    ('zero stride', {}, dict(stride=0), ValueError, 'stride must be positive'),
    ('negative stride', {}, dict(stride=(1, -2)), ValueError,
     'stride must be positive'),
    ('negative padding', {}, dict(padding=-1), ValueError,
     'padding must be non-negative'),
    ('zero dilation', {}, dict(dilation=(0, 1)), ValueError,
     'dilation must be positive'),
    ('zero groups', {}, dict(groups=0), ValueError,
     'groups must be a positive'),
    ('triple stride', {}, dict(stride=(1, 1, 1)), ValueError,
     'stride must be an int or a pair'),
    ('float stride', {}, dict(stride=2.0), ValueError,
     'stride must be an int or a pair of ints, got 2.0'),
    ('float padding pair', {}, dict(padding=(1.0, 1)), ValueError,
     r'padding must be an int or a pair of ints, got \(1.0, 1\)'),
    ('float 1-tuple stride', {}, dict(stride=(2.0, )), ValueError,
     r'stride must be an int or a pair of ints, got \(2.0, 2.0\)'),
    ('None dilation', {}, dict(dilation=None), ValueError,
     'dilation must be an int or a pair of ints, got None'),
    ('bool padding', {}, dict(padding=True), ValueError,
     'padding must be an int or a pair of ints, got True'),
    ('huge padding', {}, dict(padding=2**62), ValueError,
     'padding must be an int or a pair of ints, got 4611686018427387904'),
    ('bias shape', {}, dict(bias=torch.zeros(3)), ValueError,
     r'bias must be a tensor of shape \(2,\)'),
    ('bias dtype', {}, dict(bias=torch.zeros(2, dtype=torch.float64)),
     TypeError, 'bias must have the dtype and device'),
]


@pytest.mark.parametrize('fn', [adder2d, adder2d_reference],
                         ids=['adder2d', 'reference'])
@pytest.mark.parametrize('name,shapes_,conf,exc,match', BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input(fn, name, shapes_, conf, exc, match):
    x, w = _xw(**shapes_)
    with pytest.raises(exc, match=match):
        fn(x, w, **conf)


@pytest.mark.parametrize('fn', [adder2d, adder2d_reference],
                         ids=['adder2d', 'reference'])
def test_unbatched_input_as_conv2d(fn):
    """[C, H, W] in, [O, Ho, Wo] out, as F.conv2d; the same numbers and
    gradients as the image in a batch of one."""
    x, w = _xw(xs=(4, 6, 5))
    b = torch.randn(2)
    x3, w3, b3 = (t.clone().requires_grad_() for t in (x, w, b))
    x4, w4, b4 = (t.clone().requires_grad_() for t in (x, w, b))
    y3 = fn(x3, w3, b3, stride=(2, 1), padding=1)
    y4 = fn(x4[None], w4, b4, stride=(2, 1), padding=1)
    assert y3.shape == F.conv2d(x, w, b, stride=(2, 1), padding=1).shape
    assert torch.equal(y3, y4[0])
    g = torch.randn(y3.shape)
    y3.backward(g)
    y4[0].backward(g)
    for a, b_ in ((x3, x4), (w3, w4), (b3, b4)):
        assert a.grad.shape == a.shape and torch.equal(a.grad, b_.grad)


def test_bad_input_not_tensor():
    with pytest.raises(TypeError, match='input must be a torch.Tensor'):
        adder2d([[1.0]], torch.randn(1, 1, 1, 1))


def test_device_mismatch():
    other = 'cuda' if torch.cuda.is_available() else 'meta'
    x = torch.randn(1, 2, 4, 4)
    w = torch.randn(3, 2, 3, 3, device=other)
    with pytest.raises(ValueError, match=f'input is on cpu but weight is on '
                       f'{other}'):
        adder2d(x, w)
    with pytest.raises(TypeError, match='bias must have the dtype and device'):
        adder2d(x, torch.randn(3, 2, 3, 3), torch.zeros(3, device=other))


_FUZZ = r"""
import random, sys, warnings
import torch
from adder_mm.ops import adder2d, adder2d_int8
warnings.simplefilter('ignore')
rng = random.Random(int(sys.argv[1]))
ops = torch.ops.adder_mm


def pick(good, wrong):  # mostly a valid value, 1 in 16 an invalid one
    return rng.choice(wrong if rng.random() < 0.0625 else good)


ok = bad = 0
for it in range(int(sys.argv[2])):
    g = pick([1, 1, 2], [0, 3])
    c = g * pick([1, 2, 3], [0]) + pick([0], [1])
    o = g * pick([1, 2, 3], [0]) + pick([0], [1])
    n, h, w = pick([1, 2], [0]), pick([3, 5, 6], [0, 1]), pick([3, 4, 7], [0])
    shape_w = (o, c // max(g, 1) + pick([0], [1]), pick([1, 2, 3], [0, 9]),
               pick([1, 3], [0]))
    s = pick([1, 2, (1, 2)], [0, -1, (1, 1, 1), 1.5])
    p = pick([0, 1, (1, 0)], [-1, (0, -2)])
    d = pick([1, 2, (1, 2)], [0, (1, 1, 1)])
    kind = rng.choice(['float', 'float', 'int8', 'direct'])
    try:
        if kind == 'int8':
            x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8)
            wt = torch.randint(0, 256, shape_w, dtype=torch.uint8)
            adder2d_int8(x, wt, s, p, d, g, pick([0, 7], [256]))
        else:
            dt = rng.choice([torch.float32, torch.float64, torch.bfloat16])
            x = torch.randn(n, c, h, w, dtype=dt)
            wt = torch.randn(shape_w, dtype=pick([dt], [torch.float16]))
            if rng.random() < 0.2:
                x = x.transpose(2, 3)
            if kind == 'direct':
                pair = lambda v: list(v) if isinstance(v, tuple) else [v]
                args = (pair(s), pair(p), pair(d), g)
                y = ops.adder2d_forward(x, wt, None, *args)
                ops.adder2d_backward_input(torch.randn_like(y), x, wt, *args)
                ops.adder2d_backward_weight(torch.randn_like(y), x, wt, *args)
            else:
                x.requires_grad_()
                adder2d(x, wt, None, s, p, d, g).sum().backward()
        ok += 1
    except (RuntimeError, ValueError, TypeError):
        bad += 1
print(ok, bad)
"""


@pytest.mark.parametrize('fn', [adder2d, adder2d_reference],
                         ids=['adder2d', 'reference'])
def test_no_input_channels_gives_empty_sums(fn):
    """C = 0: every output is a sum of no terms, so the bias (as in
    adder2d_int8); the input and weight gradients are empty, the bias's is
    the sum of G. Through the C++ ops directly too."""
    x = torch.randn(2, 0, 5, 5, requires_grad=True)
    w = torch.randn(3, 0, 3, 3, requires_grad=True)
    b = torch.tensor([1.5, -2.0, 0.25], requires_grad=True)
    y = fn(x, w, b, 1, 1)
    assert torch.equal(y, b.detach().view(1, 3, 1, 1).expand(2, 3, 5, 5))
    g = torch.randn(y.shape)
    y.backward(g)
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    torch.testing.assert_close(b.grad, g.sum((0, 2, 3)))
    if fn is adder2d and HAS_EXT:
        ops, args = torch.ops.adder_mm, ([1, 1], [1, 1], [1, 1], 1)
        y = ops.adder2d_forward(x.detach(), w.detach(), None, *args)
        assert torch.equal(y, torch.zeros(2, 3, 5, 5))
        assert ops.adder2d_backward_input(g, x, w, *args).shape == x.shape
        gw, gb = ops.adder2d_backward_weight(g, x, w, *args)
        assert gw.shape == w.shape
        torch.testing.assert_close(gb, g.sum((0, 2, 3)))


@pytest.mark.parametrize('fn', [adder2d, adder2d_reference],
                         ids=['adder2d', 'reference'])
def test_no_output_channels_gives_empty_gradients(fn):
    """O = 0: an empty output, zero input gradient and empty weight and
    bias gradients (the backward failed in the vendor's weight gradient and
    in the reference's reshape)."""
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    w = torch.randn(0, 3, 3, 3, requires_grad=True)
    b = torch.zeros(0, requires_grad=True)
    y = fn(x, w, b, 1, 1)
    assert y.shape == (2, 0, 5, 5)
    (y.sum() + x.sum()).backward()  # x.sum(): x gets a gradient
    assert torch.equal(x.grad, torch.ones_like(x))
    assert w.grad.shape == w.shape and b.grad.shape == b.shape


@needs_ext
@pytest.mark.parametrize('seed', [1, 4])
def test_random_arguments_raise_or_run(seed):
    """Random shapes (zero sizes included), dtypes and geometry through
    adder2d (with backward), adder2d_int8 and the C++ ops: every call runs
    or raises a Python exception; none kills the process (a C = 0 input
    once ended it with SIGFPE). In a subprocess, so a crash fails the test."""
    proc = subprocess.run([sys.executable, '-c', _FUZZ, str(seed), '300'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    ok, bad = map(int, proc.stdout.split())
    assert ok >= 30 and bad >= 30, (ok, bad)  # both kinds of call happen


@needs_ext
def test_ext_direct_bad_args_raise():
    """The C++ entry points check their arguments (TORCH_CHECK)."""
    ops = torch.ops.adder_mm  # defined by loading adder_mm._ext (ext_info)
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(2, 4, 3, 3)
    one = [1, 1]
    zero = [0, 0]
    fwd = ops.adder2d_forward
    bad = [
        ('must be 4-D', lambda: fwd(x[0], w, None, one, zero, one, 1)),
        ('weight must be 4-D', lambda: fwd(x, w[0], None, one, zero, one, 1)),
        ('does not match weight dtype',
         lambda: fwd(x, w.double(), None, one, zero, one, 1)),
        ('floating point', lambda: fwd(x.long(), w.long(), None, one, zero,
                                       one, 1)),
        ('stride must be positive', lambda: fwd(x, w, None, [0, 1], zero, one,
                                                1)),
        ('padding must be non-negative', lambda: fwd(x, w, None, one, [-1],
                                                     one, 1)),
        ('dilation must be positive', lambda: fwd(x, w, None, one, zero,
                                                  [1, 0], 1)),
        ('groups must be positive', lambda: fwd(x, w, None, one, zero, one,
                                                0)),
        ('not divisible by groups', lambda: fwd(x, w, None, one, zero, one,
                                                3)),
        ('weight expects 8 input channels', lambda: fwd(x, w, None, one, zero,
                                                        one, 2)),
        ('larger than the padded input', lambda: fwd(x[..., :2, :2], w, None,
                                                     one, zero, one, 1)),
        ('empty kernel', lambda: fwd(x, w[..., :0], None, one, zero, one,
                                     1)),
        ('stride must have 1 or 2 elements', lambda: fwd(x, w, None, [1, 1, 1],
                                                         zero, one, 1)),
        ('bias must have shape', lambda: fwd(x, w, torch.zeros(3), one, zero,
                                             one, 1)),
        ('bias must match', lambda: fwd(x, w, torch.zeros(2).double(), one,
                                        zero, one, 1)),
    ]
    for bwd in (ops.adder2d_backward_input, ops.adder2d_backward_weight):
        bad += [
            ('grad_output must have shape', lambda bwd=bwd: bwd(
                torch.randn(1, 2, 2, 2), x, w, one, zero, one, 1)),
            ('grad_output must match', lambda bwd=bwd: bwd(
                torch.randn(1, 2, 3, 3).double(), x, w, one, zero, one, 1)),
            ('input must be 4-D', lambda bwd=bwd: bwd(
                torch.randn(1, 2, 3, 3), x[0], w, one, zero, one, 1)),
        ]
    for match, call in bad:
        with pytest.raises(RuntimeError, match=match):
            call()


@needs_ext
def test_ext_ops_on_meta_tensors_give_shapes_not_crash():
    """Tensors without storage never reach a kernel: the dispatcher sends
    them to the ops' fake (shape-only) kernels."""
    from adder_mm.ops.adder2d import _ops_for
    layer, fwd, bwd_in, bwd_w = _ops_for(torch.empty(0))  # + the fakes
    x = torch.randn(2, 4, 9, 8, device='meta')
    w = torch.randn(6, 2, 3, 3, device='meta')
    args = ([2, 1], [1, 0], [1, 2], 2)
    y = fwd(x, w, None, *args)
    assert y.device.type == 'meta' and y.shape == (2, 6, 5, 4)
    assert layer(x, w, None, *args).shape == y.shape
    g = torch.randn(y.shape, device='meta')
    assert bwd_in(g, x, w, *args).shape == x.shape
    gw, gb = bwd_w(g, x, w, *args)
    assert gw.shape == w.shape and gb.shape == (6, )
    assert gw.device.type == 'meta'


@needs_ext
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_adder2d_on_meta_tensors_takes_the_fake_kernels(dtype):
    """adder2d sent meta tensors to the pure-PyTorch reference, which loops
    over its chunks even without data: count_ops.py --shape 4096 took about
    a minute. Now shapes come from the fake kernels, for any dtype, without
    the reference's warning, with gradients."""
    x = torch.empty(2, 16, 4096, 4096, device='meta', dtype=dtype,
                    requires_grad=True)
    w = torch.empty(32, 16, 3, 3, device='meta', dtype=dtype,
                    requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        y = adder2d(x, w, None, stride=2, padding=1)
    assert y.shape == (2, 32, 2048, 2048) and y.dtype == dtype
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape


# ------------------------------------------------- layouts, edge cases
@pytest.mark.parametrize('layout', ['transposed', 'sliced', 'channels_last'])
def test_non_contiguous_inputs(layout):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(2, 6, 9, 8, generator=gen)
    if layout == 'transposed':
        x = base.transpose(2, 3)
    elif layout == 'sliced':
        x = base[:, ::2, 1:, :]
    else:
        x = base.contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    c = x.shape[1]
    w = torch.randn(4, c, 3, 2, generator=gen)
    wt = torch.randn(2, 3, c, 4, generator=gen).permute(3, 2, 1, 0) \
        if layout == 'transposed' else w  # non-contiguous weight too
    g = torch.randn(adder2d(x.contiguous(), w, padding=1,
                            stride=(1, 2)).shape, generator=gen)
    want = run_op(adder2d, x.contiguous(), wt.contiguous(), None, g,
                  padding=1, stride=(1, 2))
    got = run_op(adder2d, x, wt, None, g, padding=1, stride=(1, 2))
    for a, e in zip(got[:3], want[:3]):
        assert torch.equal(a, e)
    if layout == 'channels_last':
        # the layer keeps the memory format it was given, as conv2d does
        y = adder2d(x, w, padding=1)
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('fn', [adder2d, adder2d_reference],
                         ids=['adder2d', 'reference'])
def test_zero_batch(fn):
    x = torch.randn(0, 4, 6, 6, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    y = fn(x, w, b, stride=2, padding=1)
    assert y.shape == (0, 5, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))
    assert torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize('needs,with_bias', [
    ('input', True), ('weight', True), ('bias', True), ('input', False),
    ('weight', False)])
def test_partial_requires_grad(needs, with_bias):
    gen = torch.Generator().manual_seed(19)
    x = torch.randn(2, 4, 7, 7, generator=gen, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 6, 4, 4, generator=gen, dtype=torch.float64)
    want = oracle(x, w, b, g, stride=2, padding=1, groups=2)
    t = dict(input=x, weight=w, bias=b)[needs].requires_grad_()
    adder2d(x, w, b if with_bias else None, stride=2, padding=1,
            groups=2).backward(g)
    torch.testing.assert_close(
        t.grad, want[('input', 'weight', 'bias').index(needs) + 1],
        rtol=1e-12, atol=1e-11)
    others = [v for k, v in dict(input=x, weight=w, bias=b).items()
              if k != needs]
    assert all(v.grad is None for v in others)


@needs_ext
def test_double_backward_raises():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    y = adder2d(x, w, padding=1)
    with pytest.raises(RuntimeError, match='double backward'):
        torch.autograd.grad(y.sum(), x, create_graph=True)
    # without create_graph the same gradient works
    gx, = torch.autograd.grad(adder2d(x, w, padding=1).sum(), x)
    assert gx.shape == x.shape


def test_deterministic():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 8, 12, 12, generator=gen)
    w = torch.randn(16, 4, 3, 3, generator=gen)
    b = torch.randn(16, generator=gen)
    g = torch.randn(4, 16, 6, 6, generator=gen)
    runs = [run_op(adder2d, x, w, b, g, stride=2, padding=1, groups=2)
            for _ in range(2)]
    for a, e in zip(*runs):
        assert torch.equal(a, e)


def test_resnet20_layer_float32_vs_float64_reference():
    """A ResNet-20 stage-1 layer (16->16, 3x3, pad 1, 32x32), batch 4."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 16, 32, 32, generator=gen)
    w = torch.randn(16, 16, 3, 3, generator=gen)
    g = torch.randn(4, 16, 32, 32, generator=gen)
    got = run_op(adder2d, x, w, None, g, padding=1)
    want = run_op(adder2d_reference, x.double(), w.double(), None, g.double(),
                  padding=1)
    # |y| ~ K * 1.1 with K = 144; fp32 sums of 144 (forward) and 4096
    # (grad_weight) terms.
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got[1].double(), want[1], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got[2].double(), want[2], rtol=1e-5, atol=2e-2)


# ---------------------------------------------------------- fallback
def test_ext_info_types():
    info = ext_info()
    assert isinstance(info['cpu'], bool) and isinstance(info['cuda'], bool)
    assert info['cuda'] is False or info['cpu'] is True
    assert isinstance(info['cpu_threads'], int)
    assert (info['cpu_threads'] >= 1) == info['cpu']


@needs_ext
def test_fallback_without_extension(monkeypatch):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 7, 7, generator=gen, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 6, 4, 4, generator=gen, dtype=torch.float64)
    conf = dict(stride=2, padding=1, groups=2)
    compiled = run_op(adder2d, x, w, b, g, **conf)

    # A fresh process without the extension: importing it fails.
    monkeypatch.setitem(sys.modules, 'adder_mm._ext', None)
    monkeypatch.setattr(ext_loader, '_EXT', None)
    monkeypatch.setattr(ext_loader, '_TRIED', False)
    monkeypatch.setattr(ext_loader, '_ERROR', None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        fallback = run_op(adder2d, x, w, b, g, **conf)
        run_op(adder2d, x, w, b, g, **conf)
        info = ext_info()
    ours = [m for m in caught if 'adder_mm._ext' in str(m.message)]
    assert len(ours) == 1, [str(m.message) for m in caught]
    assert issubclass(ours[0].category, RuntimeWarning)
    assert 'falling back' in str(ours[0].message)
    assert info['cpu'] is False and info['cuda'] is False
    assert info['cpu_threads'] == 0
    assert info['error']
    assert_grads_close(fallback, compiled, 1e-12, 1e-11, 'fallback')


def test_autocast_cpu_bfloat16_computes_float32():
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, 3, 6, 6, generator=gen)
    w = torch.randn(4, 3, 3, 3, generator=gen, requires_grad=True)
    want = adder2d(x, w.detach(), padding=1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = adder2d(x, w, padding=1)
        y_bf = adder2d(x.bfloat16(), w, padding=1)
    assert y.dtype == torch.float32 and y_bf.dtype == torch.float32
    assert torch.equal(y, want)
    torch.testing.assert_close(y_bf, adder2d(x.bfloat16().float(), w.detach(),
                                             padding=1))
    y.sum().backward()
    assert w.grad.dtype == torch.float32


def test_autocast_leaves_float64_and_checks_arguments():
    """conv2d keeps float64 under autocast; adder2d cast it to float32.
    A non-tensor argument got an AttributeError from the cast instead of
    the TypeError the checks give."""
    x, w = _xw(xd=torch.float64, wd=torch.float64)
    want = adder2d(x, w)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert F.conv2d(x, w).dtype == torch.float64
        y = adder2d(x, w)
        assert y.dtype == torch.float64 and torch.equal(y, want)
        with pytest.raises(TypeError, match='weight must be a torch.Tensor'):
            adder2d(x, w.tolist())


# ------------------------------------------------------ reference memory
class _MaxNumel(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out, )):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize('chunk', [1, 37, 1000, 1 << 22])
def test_reference_chunking(monkeypatch, chunk):
    """Results do not depend on the chunk size; small chunks bound memory."""
    gen = torch.Generator().manual_seed(17)
    n, c, o, groups = 2, 4, 6, 2
    x = torch.randn(n, c, 8, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(o, c // groups, 3, 3, generator=gen, dtype=torch.float64)
    conf = ((1, 1), (1, 1), (1, 1), groups)
    g = torch.randn(n, o, 8, 8, generator=gen, dtype=torch.float64)
    want = oracle(x, w, None, g, padding=1, groups=groups)
    monkeypatch.setattr(reference, '_CHUNK_ELEMS', chunk)
    mode = _MaxNumel()
    with mode:
        y = reference.forward(x, w, *conf)
        gx = reference.grad_input(g, x, w, *conf)
        gw = reference.grad_weight(g, x, w, *conf)
    for a, e in zip((y, gx, gw), want[:3]):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    k = c // groups * 9
    full = (o // groups) * k * n * 64  # one group's [O, K, N*L] temporary
    if chunk < full:
        # the largest tensor is the im2col buffer or an output, never the
        # full temporary
        assert mode.max_numel < full
        assert mode.max_numel <= max(chunk, n * c * 9 * 64, x.numel())


# ---------------------------------------------------------- torch.compile
@needs_ext
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_custom_ops_pass_opcheck(dtype):
    """The compiled kernels are dispatcher ops (torch.ops.adder_mm.*) whose
    fake kernels agree with the real ones (schema, fake tensors, AOT
    dispatch); adder2d, the one with autograd, passes the autograd checks."""
    from adder_mm.ops.adder2d import _ops_for
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(2, 4, 7, 6, generator=gen, dtype=dtype)
    w = torch.randn(6, 2, 3, 2, generator=gen, dtype=dtype)
    b = torch.randn(6, generator=gen, dtype=dtype)
    layer, fwd, bwd_in, bwd_w = _ops_for(x)
    args = ([2, 1], [1, 0], [1, 2], 2)
    for bias in (b, None):
        torch.library.opcheck(fwd, (x, w, bias, *args))
        # with inputs that need gradients: its autograd is registered
        torch.library.opcheck(layer, (x.clone().requires_grad_(),
                                      w.clone().requires_grad_(), bias,
                                      *args))
    y = fwd(x, w, None, *args)
    g = torch.randn(y.shape, generator=gen, dtype=dtype)
    torch.library.opcheck(bwd_in, (g, x, w, *args))
    torch.library.opcheck(bwd_w, (g, x, w, *args))


@needs_ext
def test_torch_compile_as_the_first_call_in_a_process(run_python):
    """No eager call first: the extension and the fake kernels are loaded at
    import, so the traced code only reads them (a fresh process)."""
    run_python([
        'import torch',
        'from adder_mm.ops import adder2d',
        'x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)',
        'w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)',
        'f = torch.compile(lambda x, w: adder2d(x, w, None, 1, 1).relu(),',
        "                  fullgraph=True, backend='aot_eager')",
        'y = f(x, w)',
        'y.sum().backward()',
        'assert torch.equal(y, adder2d(x, w, None, 1, 1).relu())',
        "print('ok')",
    ])


@needs_ext
def test_torch_compile_fullgraph_matches_eager():
    """adder2d traces into one graph (no graph break) and the compiled
    forward and gradients equal eager's."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64)
    w1 = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    w2 = torch.randn(6, 2, 1, 2, generator=gen, dtype=torch.float64)
    b2 = torch.randn(6, generator=gen, dtype=torch.float64)

    def net(x, w1, w2, b2):
        h = adder2d(x, w1, None, 1, 1).relu()
        return adder2d(h, w2, b2, (2, 1), 0, 1, 2)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (x, w1, w2, b2)]
        y = fn(*leaves)
        y.backward(torch.ones_like(y))
        return [y.detach()] + [t.grad for t in leaves]

    eager = run(net)
    compiled = run(torch.compile(net, fullgraph=True, backend='aot_eager'))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
