"""adder2d_int8: the integer adder of quantized AdderNets.

The compiled CPU kernel (vpsadbw tiles at every instruction-set level this
CPU has, the portable one always) against the int32 reference bit for bit;
the reference against a tap-by-tap oracle written independently of it; the
fused dequantization against float64; poisoned outputs (every element
written); thread counts; bad arguments; torch.compile; the benchmark's INT8
mode.
"""
import contextlib
import importlib.util
import json
import os

import pytest
import torch

from adder_mm.ops import (
    adder2d_int8,
    adder2d_int8_reference,
    ext_info,
    quantize_to_grid,
    quantize_to_grid_reference,
)
from adder_mm.ops.adder2d_int8 import MAX_K, _adder2d_int8_into

int8_mod = importlib.import_module('adder_mm.ops.adder2d_int8')

needs_ext = pytest.mark.skipif(
    not ext_info()['cpu'],
    reason='adder_mm._ext is not built: ' + str(ext_info()['error']))


def _bytes(shape, gen):
    """Random bytes that include 0 and 255 (never all zeros)."""
    t = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    if t.numel() >= 2:
        flat = t.view(-1)
        flat[0], flat[-1] = 0, 255
    assert t.numel() == 0 or bool(t.any())
    return t


@contextlib.contextmanager
def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _oracle(qx, qw, stride, padding, dilation, groups, pad_value):
    """Tap-by-tap int64 sums over an explicitly padded input; shares no
    code with the reference (no unfold, no F.pad, no chunking)."""
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = qx.shape
    o, cg, kh, kw = qw.shape
    ho = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    xp = torch.full((n, c, h + 2 * p[0], w + 2 * p[1]), pad_value,
                    dtype=torch.int64)
    xp[:, :, p[0]:p[0] + h, p[1]:p[1] + w] = qx.long()
    wl = qw.long()
    og = o // groups
    out = torch.zeros(n, o, ho, wo, dtype=torch.int64)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * d[0], j * d[1]
            xs = xp[:, :, r0:r0 + (ho - 1) * s[0] + 1:s[0],
                    c0:c0 + (wo - 1) * s[1] + 1:s[1]]
            for g in range(groups):
                xg = xs[:, g * cg:(g + 1) * cg].unsqueeze(1)
                wg = wl[g * og:(g + 1) * og, :, i, j].view(1, og, cg, 1, 1)
                out[:, g * og:(g + 1) * og] += (xg - wg).abs().sum(2)
    return out.to(torch.int32)


# (N, C, H, W, O, kh, kw, stride, padding, dilation, groups)
CASES = [
    (2, 16, 9, 9, 16, 3, 3, 1, 1, 1, 1),  # direct reads + border rows
    (1, 3, 7, 6, 5, 3, 2, 1, 1, 1, 1),  # C/groups % 8 != 0: im2col only
    (2, 8, 5, 5, 40, 1, 1, 1, 0, 1, 1),  # 1x1, O past the widest tile
    (3, 6, 10, 10, 9, 3, 3, (1, 2), 1, (2, 1), 3),  # groups, dilation
    (2, 64, 8, 8, 64, 3, 3, 2, 1, 1, 1),  # stride 2, K = 576
    (2, 32, 6, 7, 8, 3, 3, 1, 2, 1, 4),  # wide padding, groups of 8
    (2, 24, 13, 11, 37, 3, 3, 1, 1, 1, 1),  # O-block and tile tails
    (1, 16, 12, 12, 16, 3, 3, 1, 1, 1, 16),  # depthwise
    (3, 40, 7, 9, 24, 2, 3, (2, 1), (0, 1), (1, 2), 1),  # pairs, no pad H
    (2, 16, 17, 17, 33, 5, 5, 2, 2, 2, 1),  # 5x5 dilated, O % 32 == 1
    (4, 32, 7, 7, 48, 1, 1, 2, 0, 1, 2),  # strided 1x1, groups
    (1, 8, 30, 31, 12, 3, 3, 1, 1, 1, 1),  # many chunks at batch 1
    (5, 16, 3, 3, 32, 3, 3, 1, 0, 1, 1),  # one position per image
    (3, 256, 5, 6, 20, 1, 1, 1, 0, 1, 1),  # 1x1, rows prefetched
]


def _case_tensors(case, gen):
    n, c, h, w, o, kh, kw, s, p, d, g = case
    qx = _bytes((n, c, h, w), gen)
    qw = _bytes((o, c // g, kh, kw), gen)
    pad_value = int(torch.randint(0, 256, (1, ), generator=gen))
    return qx, qw, (s, p, d, g, pad_value)


def _seed(case):
    return sum(hash(v) if not isinstance(v, tuple) else sum(v)
               for v in case) % 2**31


@pytest.mark.parametrize('case', CASES)
def test_reference_matches_tap_oracle(case):
    gen = torch.Generator().manual_seed(_seed(case))
    qx, qw, (s, p, d, g, pv) = _case_tensors(case, gen)
    ref = adder2d_int8_reference(qx, qw, s, p, d, g, pv)
    assert ref.dtype == torch.int32
    assert torch.equal(ref, _oracle(qx, qw, s, p, d, g, pv))


def test_reference_equals_float_adder_shifted_by_pad_value():
    """|x - w| = |(x - z) - (w - z)|: with z = pad_value the float adder's
    zero padding is the grid's 0.0, so S = -adder2d(x - z, w - z)."""
    from adder_mm.ops import adder2d_reference
    gen = torch.Generator().manual_seed(5)
    qx, qw = _bytes((2, 6, 9, 8), gen), _bytes((4, 3, 3, 2), gen)
    z = 77
    ref = adder2d_int8_reference(qx, qw, (2, 1), 1, (1, 2), 2, z)
    fl = adder2d_reference(qx.double() - z, qw.double() - z, None, (2, 1),
                           1, (1, 2), 2)
    assert torch.equal(ref.double(), -fl)


@pytest.mark.parametrize('chunk', [1, 40, 700])
def test_reference_chunking(monkeypatch, chunk):
    """Whole images, row blocks and column blocks per chunk give the same
    sums (the temporaries stay below _CHUNK_ELEMS)."""
    monkeypatch.setattr(int8_mod, '_CHUNK_ELEMS', chunk)
    gen = torch.Generator().manual_seed(6)
    qx, qw = _bytes((3, 4, 6, 7), gen), _bytes((5, 4, 2, 3), gen)
    ref = adder2d_int8_reference(qx, qw, 1, 1, 1, 1, 9)
    assert torch.equal(ref, _oracle(qx, qw, 1, 1, 1, 1, 9))


@needs_ext
@pytest.mark.parametrize('case', CASES)
def test_kernel_matches_reference(case, cpu_isa):
    gen = torch.Generator().manual_seed(_seed(case) + 1)
    qx, qw, (s, p, d, g, pv) = _case_tensors(case, gen)
    ref = adder2d_int8_reference(qx, qw, s, p, d, g, pv)
    for x in (qx, qx.contiguous(memory_format=torch.channels_last)):
        y = adder2d_int8(x, qw, s, p, d, g, pv)
        assert y.dtype == torch.int32 and y.shape == ref.shape
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y, ref)


def _random_case(rng):
    """A random valid case: groups, channels incl. 0, kernel up to 4x4,
    strides, dilation, padding, maps down to 0x0, batch incl. 0."""
    while True:
        g = rng.choice([1, 1, 2, 3, 4])
        cg = rng.choice([0, 1, 3, 7, 8, 9, 16, 17, 24, 40])
        og = rng.choice([1, 3, 8, 9, 16, 17, 31, 32, 33, 48, 65])
        kh, kw = rng.randint(1, 4), rng.randint(1, 4)
        s = (rng.randint(1, 3), rng.randint(1, 3))
        d = (rng.randint(1, 2), rng.randint(1, 2))
        p = (rng.randint(0, 3), rng.randint(0, 3))
        h, w = rng.randint(0, 11), rng.randint(0, 11)
        if (h + 2 * p[0] > d[0] * (kh - 1)
                and w + 2 * p[1] > d[1] * (kw - 1)):
            return (rng.choice([0, 1, 2, 3]), g * cg, h, w, g * og, kh, kw,
                    s, p, d, g)


@needs_ext
@pytest.mark.parametrize('seed', range(4))
def test_random_shapes(seed, cpu_isa):
    import random
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(12):
        case = _random_case(rng)
        qx, qw, (s, p, d, g, pv) = _case_tensors(case, gen)
        if rng.random() < 0.5:
            qx = qx.contiguous(memory_format=torch.channels_last)
        ref = adder2d_int8_reference(qx, qw, s, p, d, g, pv)
        assert torch.equal(adder2d_int8(qx, qw, s, p, d, g, pv), ref), case


@needs_ext
@pytest.mark.parametrize('cin', range(1, 9))
def test_every_k_residue_and_o_tail(cin, cpu_isa):
    """K = cin x 3 x 3 = 9 cin takes every residue mod 8 (the 8-byte pieces
    of K), K = 8 cin + 0..7 every residue mod 64 over the cases (one zmm of
    weights); O runs through every residue of the tile widths."""
    gen = torch.Generator().manual_seed(100 + cin)
    for c, k, o in ((cin, 3, 32 + cin), (8 * cin + cin - 1, 1, 8 + cin),
                    (8 * cin, 3, 16 + 2 * cin)):
        qx, qw = _bytes((2, c, 6, 5), gen), _bytes((o, c, k, k), gen)
        y = adder2d_int8(qx, qw, 1, k // 2, 1, 1, 3 * cin)
        assert torch.equal(y, adder2d_int8_reference(qx, qw, 1, k // 2, 1,
                                                      1, 3 * cin)), (c, k, o)


@needs_ext
def test_layouts_and_non_contiguous_inputs(cpu_isa):
    gen = torch.Generator().manual_seed(7)
    base = _bytes((3, 20, 11, 13), gen)
    wbase = _bytes((12, 20, 3, 3), gen)
    ref = adder2d_int8_reference(base[:, 2:18], wbase[:, 2:10], 1, 1, 1, 2,
                                 5)
    xs = [base[:, 2:18],  # channel slice (NCHW strides, not contiguous)
          base.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)[:, 2:18],
          base[:, 2:18].contiguous(),
          base[:, 2:18].contiguous(memory_format=torch.channels_last)]
    ws = [wbase[:, 2:10], wbase[:, 2:10].contiguous(),
          wbase[:, 2:10].contiguous(memory_format=torch.channels_last)]
    for x in xs:
        for w in ws:
            assert torch.equal(adder2d_int8(x, w, 1, 1, 1, 2, 5), ref)
    # a transposed view of H and W
    xt = base.transpose(2, 3)
    assert torch.equal(adder2d_int8(xt, wbase, 2, 0),
                       adder2d_int8_reference(xt.contiguous(), wbase, 2, 0))


@needs_ext
@pytest.mark.parametrize('scaled', [False, True])
def test_empty_batch(scaled, cpu_isa):
    qx = torch.zeros(0, 8, 5, 5, dtype=torch.uint8)
    qw = torch.zeros(4, 8, 3, 3, dtype=torch.uint8)
    sc = torch.ones(4) if scaled else None
    y = adder2d_int8(qx, qw, 1, 1, out_scale=sc)
    assert y.shape == (0, 4, 5, 5)
    assert y.dtype == (torch.float32 if scaled else torch.int32)
    assert adder2d_int8_reference(qx, qw, 1, 1, out_scale=sc).shape == \
        y.shape


@needs_ext
def test_no_input_channels_gives_empty_sums(cpu_isa):
    """C = 0 (K = 0): every sum is empty, S = 0 and the epilogue gives the
    bias; no division by K anywhere."""
    qx = torch.zeros(2, 0, 5, 5, dtype=torch.uint8)
    qw = torch.zeros(3, 0, 3, 3, dtype=torch.uint8)
    for fn in (adder2d_int8, adder2d_int8_reference):
        y = fn(qx, qw, 1, 1)
        assert y.shape == (2, 3, 5, 5) and torch.equal(y, torch.zeros_like(y))
        b = torch.tensor([1.5, -2.0, 0.25])
        yf = fn(qx, qw, 1, 1, 1, 1, 0, torch.ones(3), b)
        assert torch.equal(yf, b.view(1, 3, 1, 1).expand(2, 3, 5, 5))


@needs_ext
@pytest.mark.parametrize('padding', [0, 1])
def test_overflow_bound_k4608_every_term_255(padding, cpu_isa):
    """512 channels x 3x3: every term |255 - 0| (padding taps read 255 as
    well), S = 4608 * 255 = 1175040 everywhere, exact in int32 and in the
    float epilogue (< 2^24)."""
    qx = torch.full((2, 512, 4, 4), 255, dtype=torch.uint8)
    qw = torch.zeros(5, 512, 3, 3, dtype=torch.uint8)
    y = adder2d_int8(qx.contiguous(memory_format=torch.channels_last), qw, 1,
                     padding, 1, 1, 255)
    assert torch.equal(y, torch.full_like(y, 4608 * 255))
    assert torch.equal(y, adder2d_int8_reference(qx, qw, 1, padding, 1, 1,
                                                 255))
    yf = adder2d_int8(qx, qw, 1, padding, 1, 1, 255, torch.full((5, ), 0.5),
                      torch.full((5, ), 1e6))
    assert torch.equal(yf, torch.full_like(yf, 1e6 - 0.5 * 4608 * 255))


def test_k_above_int32_bound_raises():
    k = MAX_K + 1  # K * 255 > 2^31 - 1
    assert MAX_K * 255 <= 2**31 - 1 < k * 255
    qx = torch.zeros(1, k, 1, 1, dtype=torch.uint8)
    qw = torch.zeros(1, k, 1, 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match='K = .* overflows the int32'):
        adder2d_int8(qx, qw)
    with pytest.raises(ValueError, match='overflows the int32'):
        adder2d_int8_reference(qx, qw)
    if ext_info()['cpu']:
        with pytest.raises(RuntimeError, match='overflows the int32'):
            torch.ops.adder_mm.adder2d_int8(qx, qw, [1], [0], [1], 1, 0,
                                            None, None)


@needs_ext
@pytest.mark.parametrize('with_bias', [True, False])
def test_fused_epilogue_one_rounding(with_bias, cpu_isa):
    """out = bias - scale * S rounded once (an fma of float32(S)): within
    half an ulp of the float64 value computed from the int32 sums, and the
    same bits at every level."""
    gen = torch.Generator().manual_seed(8)
    qx, qw = _bytes((2, 24, 9, 7), gen), _bytes((19, 24, 3, 3), gen)
    # magnitudes that make bias and scale * S comparable (cancellation)
    sc = torch.rand(19, generator=gen) * 1e-3 + 1e-5
    sc[3] = -sc[3]  # any float32 scale
    bias = torch.randn(19, generator=gen) * 20 if with_bias else None
    s = adder2d_int8(qx, qw, 1, 1, 1, 1, 11)
    y = adder2d_int8(qx, qw, 1, 1, 1, 1, 11, sc, bias)
    assert y.dtype == torch.float32 and y.shape == s.shape
    b64 = (bias if with_bias else torch.zeros(19)).double().view(1, -1, 1, 1)
    exact = b64 - sc.double().view(1, -1, 1, 1) * s.double()
    err = (y.double() - exact).abs()
    assert bool((err <= exact.abs() * 2.0**-24 + 1e-45).all()), err.max()
    ref = adder2d_int8_reference(qx, qw, 1, 1, 1, 1, 11, sc, bias)
    torch.testing.assert_close(y, ref, rtol=2.4e-7, atol=0)
    from adder_mm.ops import set_cpu_isa
    level = set_cpu_isa('generic')
    try:
        assert torch.equal(adder2d_int8(qx, qw, 1, 1, 1, 1, 11, sc, bias), y)
    finally:
        set_cpu_isa(level)


@needs_ext
@pytest.mark.parametrize('case', CASES)
def test_every_output_written(case, cpu_isa):
    """The out= variant into a poisoned tensor: nothing of the poison left
    (int32 -1, never a sum; NaN for the float epilogue)."""
    gen = torch.Generator().manual_seed(_seed(case) + 2)
    qx, qw, (s, p, d, g, pv) = _case_tensors(case, gen)
    ref = adder2d_int8_reference(qx, qw, s, p, d, g, pv)
    cl = torch.channels_last
    out = torch.full(ref.shape, -1, dtype=torch.int32).contiguous(
        memory_format=cl)
    res = _adder2d_int8_into(out, qx, qw, s, p, d, g, pv)
    assert res.data_ptr() == out.data_ptr()
    assert torch.equal(out, ref)
    o = qw.shape[0]
    sc, b = torch.rand(o, generator=gen), torch.randn(o, generator=gen)
    outf = torch.full(ref.shape, float('nan')).contiguous(memory_format=cl)
    _adder2d_int8_into(outf, qx, qw, s, p, d, g, pv, sc, b)
    assert not bool(outf.isnan().any())
    assert torch.equal(outf, adder2d_int8(qx, qw, s, p, d, g, pv, sc, b))


@needs_ext
@pytest.mark.parametrize('groups', [1, 2])
def test_large_output_non_temporal_stores(groups, cpu_isa):
    """Outputs of 4 MiB and more are written with streaming stores (64-byte
    aligned rows): every element still written and exact."""
    gen = torch.Generator().manual_seed(14)
    qx, qw = _bytes((4, 16, 64, 64), gen), _bytes((64, 16 // groups, 3, 3),
                                                   gen)
    ref = adder2d_int8_reference(qx, qw, 1, 1, 1, groups, 21)
    assert ref.numel() * 4 >= 4 * 2**20
    cl = torch.channels_last
    out = torch.full(ref.shape, -1, dtype=torch.int32).contiguous(
        memory_format=cl)
    _adder2d_int8_into(out, qx, qw, 1, 1, 1, groups, 21)
    assert torch.equal(out, ref)
    sc = torch.rand(64, generator=gen)
    outf = torch.full(ref.shape, float('nan')).contiguous(memory_format=cl)
    _adder2d_int8_into(outf, qx, qw, 1, 1, 1, groups, 21, sc)
    exact = -sc.double().view(1, -1, 1, 1) * ref.double()
    assert bool(((outf.double() - exact).abs() <=
                 exact.abs() * 2.0**-24).all())


@needs_ext
def test_out_variant_rejects_bad_out():
    qx = torch.zeros(1, 8, 4, 4, dtype=torch.uint8)
    qw = torch.zeros(3, 8, 1, 1, dtype=torch.uint8)
    cl = torch.channels_last
    bad = [
        (torch.zeros(1, 3, 4, 4, dtype=torch.int32), 'channels_last'),
        (torch.zeros(1, 3, 4, 5, dtype=torch.int32).contiguous(
            memory_format=cl), 'shape'),
        (torch.zeros(1, 3, 4, 4).contiguous(memory_format=cl), 'Int'),
    ]
    for out, match in bad:
        with pytest.raises(RuntimeError, match=match):
            _adder2d_int8_into(out, qx, qw)


@needs_ext
def test_bit_identical_across_thread_counts(cpu_isa):
    gen = torch.Generator().manual_seed(9)
    qx, qw = _bytes((3, 32, 15, 14), gen), _bytes((40, 32, 3, 3), gen)
    sc, b = torch.rand(40, generator=gen), torch.randn(40, generator=gen)
    outs = []
    for t in (1, 2, 3):
        with _threads(t):
            outs.append((adder2d_int8(qx, qw, 1, 1, 1, 1, 4),
                         adder2d_int8(qx, qw, 1, 1, 1, 1, 4, sc, b)))
    for y, yf in outs[1:]:
        assert torch.equal(y, outs[0][0]) and torch.equal(yf, outs[0][1])


def _bad_calls():
    u8 = torch.uint8
    x = torch.zeros(2, 8, 5, 5, dtype=u8)
    w = torch.zeros(4, 8, 3, 3, dtype=u8)
    sc = torch.ones(4)
    return [
        (dict(qx=x.float()), TypeError, 'qx must be uint8'),
        (dict(qw=w.to(torch.int8)), TypeError, 'qw must be uint8'),
        (dict(qx=x[0]), ValueError, 'qx must be 4-D'),
        (dict(qw=w[0]), ValueError, 'qw must be 4-D'),
        (dict(qw=torch.zeros(4, 6, 3, 3, dtype=u8)), ValueError,
         'qx has 8 channels but qw expects 6'),
        (dict(groups=3), ValueError, 'groups=3 must divide'),
        (dict(groups=0), ValueError, 'groups must be a positive int'),
        (dict(qw=torch.zeros(4, 8, 9, 3, dtype=u8)), ValueError,
         'larger than the padded input'),
        (dict(dilation=(3, 1)), ValueError, 'larger than the padded input'),
        (dict(stride=0), ValueError, 'stride must be positive'),
        (dict(dilation=(1, 0)), ValueError, 'dilation must be positive'),
        (dict(padding=-1), ValueError, 'padding must be non-negative'),
        (dict(stride=(1, 2, 3)), ValueError, 'stride must be an int'),
        (dict(pad_value=256), ValueError, 'pad_value must be an int in'),
        (dict(pad_value=-1), ValueError, 'pad_value must be an int in'),
        (dict(pad_value=1.0), ValueError, 'pad_value must be an int in'),
        (dict(out_scale=torch.ones(3)), ValueError,
         r'out_scale must be a tensor of shape \(4,\)'),
        (dict(out_scale=torch.ones(4, dtype=torch.float64)), TypeError,
         'out_scale must be float32'),
        (dict(out_scale=sc, out_bias=torch.ones(4, 1)), ValueError,
         'out_bias must be a tensor of shape'),
        (dict(out_scale=sc, out_bias=torch.ones(4, dtype=torch.float16)),
         TypeError, 'out_bias must be float32'),
        (dict(out_bias=torch.ones(4)), ValueError,
         'out_bias is given without out_scale'),
        (dict(out_scale=torch.ones(4, device='meta')), ValueError,
         'out_scale is on meta but qx is on cpu'),
        (dict(qw=torch.zeros(4, 8, 3, 3, dtype=u8, device='meta')),
         ValueError, 'qx is on cpu but qw is on meta'),
        (dict(qx=[[1]]), TypeError, 'qx must be a torch.Tensor'),
    ]


@pytest.mark.parametrize('fn', [adder2d_int8, adder2d_int8_reference])
@pytest.mark.parametrize('bad', _bad_calls(),
                         ids=[b[2] for b in _bad_calls()])
def test_bad_arguments_name_the_problem(fn, bad):
    kwargs = dict(qx=torch.zeros(2, 8, 5, 5, dtype=torch.uint8),
                  qw=torch.zeros(4, 8, 3, 3, dtype=torch.uint8), padding=0)
    change, exc, match = bad
    kwargs.update(change)
    with pytest.raises(exc, match=match):
        fn(**kwargs)


@needs_ext
def test_op_direct_bad_args_raise_not_crash():
    """The dispatcher op checks again (TORCH_CHECK): direct callers get an
    exception naming the problem, never a crash."""
    op = torch.ops.adder_mm.adder2d_int8
    x = torch.zeros(2, 8, 5, 5, dtype=torch.uint8)
    w = torch.zeros(4, 8, 3, 3, dtype=torch.uint8)
    ok = ([1], [1], [1], 1, 0, None, None)
    calls = [
        ((x.float(), w) + ok, 'qx must be uint8'),
        ((x, w.float()) + ok, 'qw must be uint8'),
        ((x[0], w) + ok, '4-D'),
        ((x, w[:, :6]) + ok, 'qw expects 6 input channels'),
        ((x, w, [0], [1], [1], 1, 0, None, None), 'stride must be positive'),
        ((x, w, [1], [-1], [1], 1, 0, None, None),
         'padding must be non-negative'),
        ((x, w, [1], [1], [1, 2, 3], 1, 0, None, None), '1 or 2 elements'),
        ((x, w, [1], [0], [3], 1, 0, None, None), 'larger than the padded'),
        ((x, w, [1], [1], [1], 3, 0, None, None), 'not divisible by groups'),
        ((x, w, [1], [1], [1], 1, 300, None, None), 'pad_value'),
        ((x, w, [1], [1], [1], 1, 0, torch.ones(3), None), 'out_scale'),
        ((x, w, [1], [1], [1], 1, 0, torch.ones(4).double(), None),
         'out_scale must be float32'),
        ((x, w, [1], [1], [1], 1, 0, None, torch.ones(4)),
         'out_bias is given without out_scale'),
    ]
    for args, match in calls:
        with pytest.raises(RuntimeError, match=match):
            op(*args)


def test_reference_is_device_agnostic():
    """The reference uses only device-agnostic ops: on meta tensors it
    runs through to the right shape and dtype; on CUDA (where there is no
    kernel, adder2d_int8 runs it) it equals the CPU result."""
    qx = torch.zeros(2, 8, 7, 6, dtype=torch.uint8, device='meta')
    qw = torch.zeros(6, 4, 3, 2, dtype=torch.uint8, device='meta')
    y = adder2d_int8_reference(qx, qw, (2, 1), 1, (1, 2), 2, 7)
    assert y.device.type == 'meta' and y.dtype == torch.int32
    assert y.shape == (2, 6, 4, 6)
    yf = adder2d_int8_reference(qx, qw, (2, 1), 1, (1, 2), 2, 7,
                                torch.ones(6, device='meta'))
    assert yf.dtype == torch.float32 and yf.shape == y.shape


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason='needs a CUDA device (the reference path there)')
def test_cuda_runs_the_reference():
    gen = torch.Generator().manual_seed(10)
    qx, qw = _bytes((2, 16, 9, 9), gen), _bytes((8, 16, 3, 3), gen)
    sc, b = torch.rand(8, generator=gen), torch.randn(8, generator=gen)
    cpu = adder2d_int8_reference(qx, qw, 1, 1, 1, 1, 3, sc, b)
    cuda = adder2d_int8(qx.cuda(), qw.cuda(), 1, 1, 1, 1, 3, sc.cuda(),
                        b.cuda())
    assert cuda.device.type == 'cuda'
    assert torch.equal(cuda.cpu(), cpu)


def test_fallback_without_extension(monkeypatch):
    """Without adder_mm._ext the function runs the reference."""
    monkeypatch.setattr(int8_mod, '_ops', None)
    gen = torch.Generator().manual_seed(11)
    qx, qw = _bytes((2, 6, 7, 7), gen), _bytes((4, 6, 3, 3), gen)
    y = adder2d_int8(qx, qw, 1, 1, 1, 1, 2)
    assert y.is_contiguous()
    assert torch.equal(y, _oracle(qx, qw, 1, 1, 1, 1, 2))


@needs_ext
def test_opcheck():
    """Schema, fake kernel (shape, dtype, channels_last strides) and AOT
    dispatch of the op and its out= overload agree with the kernel."""
    gen = torch.Generator().manual_seed(12)
    qx, qw = _bytes((2, 8, 7, 6), gen), _bytes((6, 4, 3, 2), gen)
    sc, b = torch.rand(6, generator=gen), torch.randn(6, generator=gen)
    op = torch.ops.adder_mm.adder2d_int8
    args = ([2, 1], [1, 0], [1, 2], 2, 9)
    for extra in ((None, None), (sc, None), (sc, b)):
        torch.library.opcheck(op.default, (qx, qw, *args, *extra))
    y = op.default(qx, qw, *args, sc, b)
    torch.library.opcheck(op.out, (qx, qw, *args, sc, b),
                          {'out': torch.empty_like(y)})


@needs_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(13)
    qx, qw = _bytes((2, 16, 8, 8), gen), _bytes((8, 16, 3, 3), gen)
    sc, b = torch.rand(8, generator=gen), torch.randn(8, generator=gen)

    def layer(x, w, sc, b):
        return adder2d_int8(x, w, 1, 1, 1, 1, 5, sc, b).relu()

    compiled = torch.compile(layer, fullgraph=True, backend='aot_eager')
    assert torch.equal(compiled(qx, qw, sc, b), layer(qx, qw, sc, b))


# ---------------------------------------------------- quantize_to_grid
def _grid_inputs(n, lo, scale, gen):
    """Random values around the grid with exact ties (half steps), values
    outside it, +-inf, +-0 and a length that leaves a vector tail."""
    x = torch.randn(n, generator=gen) * scale * 200 + lo + 100 * scale
    k = torch.arange(min(n, 300), dtype=torch.float32)
    x[:k.numel()] = lo + (k - 20) * 0.5 * scale  # ties (where exact)
    x[-6:] = torch.tensor([float('inf'), -float('inf'), 1e30, -1e30, 0.,
                           -0.])
    return x


@pytest.mark.parametrize('lo, scale, qmax', [
    (0.0, 0.03125, 255), (-1.3, 0.0173, 255), (0.25, 1.0, 15),
    (-2.0, 0.37, 63), (0.1, 1e-3, 1)])
@pytest.mark.parametrize('n', [1, 15, 16, 17, 1003, 70001])
def test_quantize_to_grid_equals_torch_formula(lo, scale, qmax, n):
    """The one-pass kernel gives the bytes of round((x - lo) / scale)
    clamped to 0..qmax (torch.round: ties to even), tails included."""
    gen = torch.Generator().manual_seed(n)
    x = _grid_inputs(max(n, 8), lo, scale, gen)[:n]
    want = quantize_to_grid_reference(x, lo, scale, qmax)
    for threads in (1, 2):
        with _threads(threads):
            got = quantize_to_grid(x, lo, scale, qmax)
        assert got.dtype == torch.uint8 and torch.equal(got, want)
    assert want.max() <= qmax


def test_quantize_to_grid_layouts_nan_and_errors():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 7, 9, generator=gen).contiguous(
        memory_format=torch.channels_last)
    q = quantize_to_grid(x, -0.5, 0.01, 255)
    assert q.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(q, quantize_to_grid_reference(x, -0.5, 0.01, 255))
    xt = x.transpose(2, 3)  # neither layout: read through its strides
    assert torch.equal(quantize_to_grid(xt, -0.5, 0.01, 255),
                       quantize_to_grid_reference(xt, -0.5, 0.01, 255))
    nan = torch.full((33, ), float('nan'))
    if ext_info()['cpu']:
        assert quantize_to_grid(nan, 0., 1., 255).eq(0).all()
    meta = quantize_to_grid(x.to('meta'), 0., 1., 255)
    assert meta.shape == x.shape and meta.dtype == torch.uint8
    for args, err, match in (
            ((x.double(), 0., 1., 255), TypeError, 'float32'),
            ((x, 0., 0., 255), ValueError, 'scale must be positive'),
            ((x, float('nan'), 1., 255), ValueError, 'lo finite'),
            ((x, 0., 1., 256), ValueError, 'qmax must be in 1..255'),
            ((x, 0., 1., 0), ValueError, 'qmax must be in 1..255')):
        with pytest.raises(err, match=match):
            quantize_to_grid(*args)


@needs_ext
def test_quantize_to_grid_op_checks_and_opcheck():
    op = torch.ops.adder_mm.quantize_to_grid.default
    x = torch.randn(3, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(op, (x, -1.0, 0.02, 255))
    with pytest.raises(RuntimeError, match='must be float32'):
        op(x.half(), 0., 1., 255)
    with pytest.raises(RuntimeError, match='qmax must be in 1..255'):
        op(x, 0., 1., 300)


# ---------------------------------------------------------- benchmark
BENCHMARK = os.path.join('tools', 'analysis_tools', 'benchmark_adder.py')


@needs_ext
def test_benchmark_int8_mode_runs_and_reports(tmp_path, run_tool):
    """--int8 on one small layer end to end: four timings, ratios taken
    from the same rounds, header with the CPU's ISA flags and torch's
    INT8 conv kernel, JSON and markdown written."""
    out, md = tmp_path / 'int8.json', tmp_path / 'int8.md'
    proc = run_tool([BENCHMARK, '--int8', '--int8-model', '--suite',
                     'resnet20', '--layers', 'layer3.0.down', '--repeat', '3',
                     '--warmup', '1', '--threads', '1', '--out', out,
                     '--markdown', md])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    lay, = res['layers']
    assert lay['name'] == 'layer3.0.down'
    for key in ('int8_adder_ms', 'fp32_adder_ms', 'int8_conv_ms',
                'fp32_conv_ms', 'fp32_adder_over_int8_adder',
                'int8_adder_over_int8_conv', 'int8_conv_over_fp32_conv'):
        assert lay[key] > 0, key
    for key in ('fp32_adder_over_int8_adder', 'int8_adder_over_int8_conv'):
        s = res['summary'][key]
        assert s['count'] == 1 and s['median'] == pytest.approx(lay[key])
        assert res['summary'][key + '_resnet20']['count'] == 1
    assert res['env']['threads'] == 1
    assert isinstance(res['env']['isa'], list)
    assert lay['int8_conv_impl'] == res['env']['int8_conv_impl']
    text = md.read_text()
    assert 'layer3.0.down' in text and 'int8 adder / int8 conv' in text
    assert res['env']['int8_conv_impl'] in text
    # the whole quantized ResNet-20 against its float32 self
    assert 'faster quantized' in text and 'images/s' in text


def test_benchmark_int8_rejects_cuda(run_tool):
    proc = run_tool([BENCHMARK, '--int8', '--device', 'cuda'])
    assert proc.returncode == 2 and 'CPU only' in proc.stderr
