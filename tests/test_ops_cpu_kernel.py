"""The blocked CPU kernels of adder_mm._ext against the float64 reference.

Shapes are picked to hit the kernels' edge cases: strips that straddle output
rows and images' ends, output channels not a multiple of the tile height,
im2col rows not a multiple of the grad tile, several chunks per image,
channel-blocked grad_X (batch 1), strided/dilated/padded/non-square taps and
groups. Also bit-identical results run to run and across thread counts, and
every instruction-set level this CPU has (the portable one always).
"""
import json
import os
import sys

import pytest
import torch
from conftest import CPU_ISAS

from adder_mm.ops import adder2d_reference, ext_info

pytestmark = pytest.mark.skipif(
    not ext_info()['cpu'],
    reason='adder_mm._ext is not built: ' + str(ext_info()['error']))

# ext_info() loaded adder_mm._ext, which defines torch.ops.adder_mm.*.

# (N, C, H, W, O, kh, kw, stride, padding, dilation, groups)
CASES = [
    (2, 3, 7, 9, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1),  # OW < strip width
    (1, 4, 11, 13, 7, 3, 2, (2, 1), (0, 2), (1, 2), 1),  # batch 1, non-square
    (3, 6, 10, 10, 9, 3, 3, (1, 2), (1, 1), (2, 1), 3),  # groups, dilation
    (2, 8, 5, 33, 6, 1, 1, (1, 1), (0, 0), (1, 1), 2),  # 1x1, OW > strip
    (1, 2, 40, 40, 3, 5, 5, (1, 1), (2, 2), (1, 1), 1),  # several chunks
    (2, 16, 4, 4, 16, 4, 4, (3, 3), (3, 3), (1, 1), 4),  # taps mostly padding
    (1, 40, 24, 24, 13, 3, 3, (1, 1), (1, 1), (1, 1), 1),  # big K, grad blocks
    # full-width strips on one output row, padding edges on both sides
    (2, 3, 6, 32, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 3, 5, 41, 5, 3, 3, (1, 2), (1, 1), (1, 1), 1),  # stride 2 along W
    (1, 2, 5, 40, 3, 3, 3, (1, 1), (2, 3), (1, 2), 1),  # dilated W, wide pad
    # Edges of the 32-slot AVX-512 strip (16 for AVX2): 7x7 maps (strips
    # cross rows and images; O % 8 and rows % 6 != 0); all positions in
    # less than one strip; OW one more / one less than the strip; two
    # full strips per row with padding at both edges; stride 2 and
    # dilation 2 landing on OW = 32; groups of one tile each; two forward
    # K-blocks (14x14, 24 channels: 14 + 10); a 1x1 layer with two
    # K-blocks (300 channels); strided 1x1 (grad_X pixels no tap reads).
    (3, 5, 7, 7, 11, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (1, 2, 3, 3, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 2, 5, 33, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 2, 5, 31, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (1, 3, 4, 64, 9, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 4, 9, 64, 8, 3, 3, (2, 2), (1, 1), (1, 1), 1),
    (1, 3, 6, 36, 5, 3, 3, (1, 1), (2, 2), (2, 2), 1),
    (2, 16, 9, 9, 16, 3, 3, (1, 1), (1, 1), (1, 1), 2),
    (2, 24, 14, 14, 20, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 300, 3, 5, 12, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    (2, 6, 9, 11, 10, 1, 1, (2, 2), (0, 0), (1, 1), 1),
    # The stride-1 virtual grid (OH x (W + 2 pad) positions read from
    # zero-padded windows): forward chunks spanning images (16x16, O = 8),
    # grad_X tasks of 3 and 4 images (8x8), dilated rows with unequal
    # padding and a 2x3 kernel, a 3x1 kernel without padding (read in
    # place), groups.
    (5, 3, 16, 16, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (7, 4, 8, 8, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 3, 12, 20, 5, 2, 3, (1, 1), (2, 1), (2, 1), 1),
    (2, 3, 9, 10, 4, 3, 1, (1, 1), (0, 0), (1, 1), 1),
    (2, 8, 10, 12, 8, 3, 3, (1, 1), (1, 1), (1, 1), 4),
    # Full strips of one image that the last K-block's tiles store into
    # the output directly, beside strips crossing images (through the
    # accumulator), with O % 8 != 0 (a last tile of fewer rows): 1x1 read
    # in place with several K-blocks; the virtual grid with strips inside
    # one row (OW = 70 > strip); the segment path at stride 2.
    (3, 300, 8, 9, 13, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    (2, 20, 6, 70, 11, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 10, 9, 80, 12, 3, 3, (2, 2), (1, 1), (1, 1), 1),
    # Fewer forward chunks than threads (batch 1, one strip): the output
    # channel blocks are shared out as well (O % 8 != 0; with groups).
    (1, 6, 4, 4, 30, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (1, 8, 4, 4, 36, 3, 3, (1, 1), (1, 1), (1, 1), 2),
]


def _run(case, dtype, offset=0.0):
    n, c, h, w, o, kh, kw, s, p, d, g = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) + offset
    wt = torch.randn(o, c // g, kh, kw, generator=gen,
                     dtype=torch.float64) + offset
    x64 = x.clone().requires_grad_()
    ref = adder2d_reference(x64, wt, None, s, p, d, g)
    gout = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    gx_ref, = torch.autograd.grad(ref, x64, gout)
    args = (list(s), list(p), list(d), g)
    y = torch.ops.adder_mm.adder2d_forward(x.to(dtype), wt.to(dtype), None,
                                           *args)
    gx = torch.ops.adder_mm.adder2d_backward_input(
        gout.to(dtype), x.to(dtype), wt.to(dtype), *args)
    return y, ref.detach(), gx, gx_ref


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_matches_reference(case, dtype, cpu_isa):
    y, ref, gx, gx_ref = _run(case, dtype)
    _check(y, ref, gx, gx_ref, dtype)


def _check(y, ref, gx, gx_ref, dtype):
    assert y.dtype == dtype and gx.dtype == dtype
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()
    rtol = 1e-12 if dtype == torch.float64 else 2e-6
    scale_y = ref.abs().max().item()
    scale_g = gx_ref.abs().max().item()
    assert (y.double() - ref).abs().max().item() <= rtol * scale_y
    assert (gx.double() - gx_ref).abs().max().item() <= rtol * max(scale_g, 1)


def test_large_common_offset_float32():
    # |x - w| is summed directly (no x + w - 2 min(x, w) identity), so a
    # common offset of 1000 costs no accuracy beyond the inputs' rounding.
    y, ref, _, _ = _run(CASES[2], torch.float32, offset=1000.0)
    err = (y.double() - ref).abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item() + 1e-3


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('where', ['x nan', 'w nan', 'x inf w inf'])
def test_nan_and_inf_propagate_as_in_the_reference(where, dtype, cpu_isa):
    """A NaN difference (a NaN in x or w, or inf - inf) makes the forward
    and grad_X NaN wherever it takes part, as torch.clamp keeps NaN in the
    reference; AVX-512's one-op clamp gave -1 (and AVX2/portable +1) for
    it, a finite grad_X. Every other element stays finite and close."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 6, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(7, 5, 3, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 7, 6, 6, generator=gen, dtype=torch.float64)
    if 'x nan' in where:
        x[1, 2, 3, 4] = float('nan')
    if 'w nan' in where:
        w[4, 1, 0, 2] = float('nan')
    if 'inf' in where:
        x[0, 3, 2, 2] = float('inf')
        w[5, 3, 1, 1] = float('inf')
    args = ([1, 1], [1, 1], [1, 1], 1)
    xd, wd, gd = (t.to(dtype) for t in (x, w, g))
    y = torch.ops.adder_mm.adder2d_forward(xd, wd, None, *args)
    gx = torch.ops.adder_mm.adder2d_backward_input(gd, xd, wd, *args)
    xr = x.clone().requires_grad_()
    ref = adder2d_reference(xr, w, None, 1, 1)
    ref.backward(g)
    for got, want in ((y, ref.detach()), (gx, xr.grad)):
        assert torch.equal(got.isnan(), want.isnan())
        assert want.isnan().any() and not want.isnan().all()
        ok = want.isfinite()
        assert torch.equal(got.isfinite(), ok)
        rtol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got[ok].double(), want[ok], rtol=rtol,
                                   atol=rtol * want[ok].abs().max().item())


# ResNet-50 3x3 layers at batch 2: (C, H, W, O); K = 9 * C. layer4.1.conv2
# (7x7, K = 4608: strips cross images) and layer3.1.conv2 (14x14).
R50_LAYERS = [(512, 7, 7, 512), (256, 14, 14, 256)]
# float32 unit roundoff
U32 = 2.0**-24


def _r50_case(layer):
    c, h, w, o = layer
    return (2, c, h, w, o, 3, 3, (1, 1), (1, 1), (1, 1), 1)


def _grid(shape, gen, half_range, step):
    """Random multiples of `step` in [-half_range, half_range]."""
    n = int(2 * half_range / step)
    return (torch.randint(0, n + 1, shape, generator=gen,
                          dtype=torch.float64) * step - half_range)


def _kernels(case, x, wt, gout):
    args = (list(case[7]), list(case[8]), list(case[9]), case[10])
    y = torch.ops.adder_mm.adder2d_forward(x, wt, None, *args)
    gx = torch.ops.adder_mm.adder2d_backward_input(gout, x, wt, *args)
    return y, gx


@pytest.mark.parametrize('layer', R50_LAYERS)
def test_resnet50_layer_exact_on_a_grid(layer, cpu_isa):
    """Every partial sum exactly representable: no tolerance at all.

    x, w are multiples of 1/4 in [-4, 4] and grad_out multiples of 1/8 in
    [-2, 2], so every |x - w| (<= 8), every forward partial sum (<= 8 K
    = 36864 in steps of 1/4 < 2**24 steps), every clamp(w - x) * g (steps
    of 1/32) and every grad_X sum (<= 2 * 9 * 512 in steps of 1/32) is a
    float32 number: the float32 kernels must equal the float64 reference
    bit for bit at every level, so a dropped, doubled or misplaced tap
    (or an unwritten element) cannot pass.
    """
    case = _r50_case(layer)
    n, c, h, w, o = case[:5]
    gen = torch.Generator().manual_seed(c)
    x = _grid((n, c, h, w), gen, 4, 0.25)
    wt = _grid((o, c, 3, 3), gen, 4, 0.25)
    gout = _grid((n, o, h, w), gen, 2, 0.125)
    x64 = x.clone().requires_grad_()
    ref = adder2d_reference(x64, wt, None, 1, 1)
    gx_ref, = torch.autograd.grad(ref, x64, gout)
    # not degenerate: outputs take many values
    assert ref.unique().numel() > 1000 and gx_ref.unique().numel() > 1000
    y, gx = _kernels(case, x.float(), wt.float(), gout.float())
    assert torch.equal(y.double(), ref.detach())
    assert torch.equal(gx.double(), gx_ref)


@pytest.mark.parametrize('layer', R50_LAYERS)
def test_resnet50_layer_float32_rounding(layer, cpu_isa):
    """Random N(0, 1) data: every element within a bound from float32
    rounding, tight enough that one dropped term is over it.

    Forward: each output sums K non-negative terms in one sequential chain;
    the rounding errors of such a chain grow like sqrt(K) u |y| (u = 2**-24;
    ~1.1 sqrt(K) u |y| was the largest seen at K = 4608), so the bound is
    4 sqrt(K) u |y|. grad_X: each pixel sums at most 9 O signed terms
    clamp(w - x) g; its bound is 4 sqrt(9 O) u times the sum of |g| over
    the terms (conv_transpose of |grad_out| with a kernel of ones), which
    bounds every partial sum. The test checks that both bounds stay far
    below the typical dropped term (E|x - w| = 1.13; E|clamp * g| ~ 0.5).
    """
    case = _r50_case(layer)
    n, c, h, w, o = case[:5]
    gen = torch.Generator().manual_seed(c + 1)
    x = torch.randn(n, c, h, w, generator=gen).double()
    wt = torch.randn(o, c, 3, 3, generator=gen).double()
    gout = torch.randn(n, o, h, w, generator=gen).double()
    x64 = x.clone().requires_grad_()
    ref = adder2d_reference(x64, wt, None, 1, 1)
    gx_ref, = torch.autograd.grad(ref, x64, gout)
    ref = ref.detach()
    k = c * 9
    tol_y = 4 * k**0.5 * U32 * ref.abs()
    abs_terms = torch.nn.functional.conv_transpose2d(
        gout.abs(), torch.ones(o, c, 3, 3, dtype=torch.float64), padding=1)
    tol_gx = 4 * (9 * o)**0.5 * U32 * abs_terms
    assert tol_y.max() < 0.1 and tol_gx.max() < 0.1
    y, gx = _kernels(case, x.float(), wt.float(), gout.float())
    err_y = (y.double() - ref).abs()
    err_gx = (gx.double() - gx_ref).abs()
    print('error / bound:', (err_y / tol_y).max().item(),
          (err_gx / tol_gx).max().item())
    assert (err_y <= tol_y).all(), (err_y / tol_y).max()
    assert (err_gx <= tol_gx).all(), (err_gx / tol_gx).max()


def test_outputs_fully_written_poisoned(run_python):
    """Outputs come from torch.empty; in a process whose malloc fills new
    blocks with 0x7f bytes (glibc MALLOC_PERTURB_), an element a kernel
    leaves unwritten reads 3.4e38 (float32) / 1.4e306 (float64) and fails
    the reference comparison (strided 1x1 grad_X has pixels no tap reads:
    there an unwritten zero-initialised output would pass unnoticed)."""
    out = run_python(
        'import torch\n'
        'from adder_mm.ops import machine_cpu_isa, set_cpu_isa\n'
        'import test_ops_cpu_kernel as t\n'
        'probe = torch.empty(1 << 20)\n'
        'if not (probe == 3.3961514e38).all():\n'
        '    print("no poison")\n'
        'else:\n'
        '    levels = t.CPU_ISAS[:t.CPU_ISAS.index(machine_cpu_isa()) + 1]\n'
        '    for isa in levels:\n'
        '        set_cpu_isa(isa)\n'
        '        for dtype in (torch.float32, torch.float64):\n'
        '            for case in t.CASES:\n'
        '                y, ref, gx, gx_ref = t._run(case, dtype)\n'
        '                t._check(y, ref, gx, gx_ref, dtype)\n'
        '        print("checked", isa)\n'
        'print("ok")\n',
        env=dict(MALLOC_PERTURB_='128',
                 PYTHONPATH=os.pathsep.join(
                     [os.path.dirname(__file__)] + sys.path)),
        timeout=600)
    if 'no poison' in out:
        pytest.skip('malloc does not honour MALLOC_PERTURB_ (not glibc?)')
    from adder_mm.ops import machine_cpu_isa
    for isa in CPU_ISAS[:CPU_ISAS.index(machine_cpu_isa()) + 1]:
        assert f'checked {isa}' in out


@pytest.mark.parametrize(
    'case', [CASES[1], CASES[6], CASES[10], CASES[-2], CASES[-1]])
def test_bit_identical_across_runs_and_threads(case, cpu_isa):
    before = torch.get_num_threads()
    try:
        outs = []
        # Oversubscribing is fine here: the point is several threads.
        for threads in (3, 1, 2, 6, 3):
            torch.set_num_threads(threads)
            y, _, gx, _ = _run(case, torch.float32)
            outs.append((y, gx))
    finally:
        torch.set_num_threads(before)
    for y, gx in outs[1:]:
        assert torch.equal(y, outs[0][0])
        assert torch.equal(gx, outs[0][1])


def test_kernels_run_on_torch_threads():
    """The kernels' parallel loops use torch's thread count.

    ATen's parallel_for is a header template: built without the compiler's
    OpenMP flag it silently runs every kernel on one thread.
    """
    before = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            assert ext_info()['cpu_threads'] == threads
    finally:
        torch.set_num_threads(before)


def test_isa_from_environment(run_python):
    """ADDER_MM_CPU_ISA caps the level from the start of the process; a
    value that is not a level is an error naming the variable."""
    run_python(
        'from adder_mm.ops import ext_info\n'
        'assert ext_info()["cpu_isa"] == "generic", ext_info()\n'
        'print("ok")\n',
        env=dict(ADDER_MM_CPU_ISA='generic'), timeout=120)
    run_python(
        'import torch\n'
        'import adder_mm.ops\n'
        'try:\n'
        '    adder_mm.ops.adder2d(torch.randn(1, 1, 3, 3),\n'
        '                         torch.randn(1, 1, 1, 1))\n'
        'except RuntimeError as e:\n'
        '    assert "ADDER_MM_CPU_ISA=sse9" in str(e), e\n'
        '    assert "generic, avx2 or avx512" in str(e), e\n'
        'else:\n'
        '    raise AssertionError("no error")\n'
        '# an explicit level overrides the bad variable (it kept raising)\n'
        'best = adder_mm.ops.machine_cpu_isa()\n'
        'assert adder_mm.ops.set_cpu_isa("generic") == best\n'
        'assert adder_mm.ops.ext_info()["cpu_isa"] == "generic"\n'
        'adder_mm.ops.adder2d(torch.randn(1, 1, 3, 3),\n'
        '                     torch.randn(1, 1, 1, 1))\n'
        'print("ok")\n',
        env=dict(ADDER_MM_CPU_ISA='sse9'), timeout=120)


def test_set_cpu_isa_levels():
    from adder_mm.ops import machine_cpu_isa, set_cpu_isa
    best = machine_cpu_isa()
    assert best in ('generic', 'avx2', 'avx512')
    before = set_cpu_isa('generic')
    try:
        assert ext_info()['cpu_isa'] == 'generic'
        # Above the machine's level: clamped to it.
        assert set_cpu_isa('avx512') == 'generic'
        assert ext_info()['cpu_isa'] == best
        with pytest.raises(ValueError, match='unknown level'):
            set_cpu_isa('avx1024')
    finally:
        set_cpu_isa(before)


BENCHMARK = os.path.join('tools', 'analysis_tools', 'benchmark_adder.py')


def test_benchmark_names_unknown_layers(capsys, tool_module):
    """--layers with a name of no suite benchmarked nothing and wrote an
    empty table."""
    tool = tool_module(BENCHMARK)
    args = tool.parse_args(['--suite', 'resnet20', '--layers',
                            'layer1.0.conv1'])
    assert args.layers == 'layer1.0.conv1'
    with pytest.raises(SystemExit) as e:
        tool.parse_args(['--suite', 'resnet20', '--layers',
                         'layer1.0.conv1,layer4.1.conv2'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'no layer layer4.1.conv2 in --suite resnet20' in err
    assert 'layer3.0.down' in err


def test_benchmark_unfold_form_and_layer_lists():
    """The benchmark's paper-style unfold formulation is the same function
    (and gradients) as the reference, and its layer lists are ResNet-20's
    and ResNet-50's distinct adder layers."""
    from adder_mm.analysis import benchmark as bench
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    ya = bench.UnfoldAdder.apply(xa, wa, 2, 1)
    yb = adder2d_reference(xb, wb, None, 2, 1)
    gout = torch.randn(ya.shape, generator=gen, dtype=torch.float64)
    ya.backward(gout)
    yb.backward(gout)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(wa.grad, wb.grad)
    r20, r50 = bench.resnet20_layers(), bench.resnet50_layers()
    # 16->16 3x3; per later stage: strided 3x3, 3x3, strided 1x1 shortcut
    assert len(r20) == 7
    assert {(lay['C'], lay['O'], lay['k'], lay['stride']) for lay in r20} == {
        (16, 16, 3, 1), (16, 32, 3, 2), (32, 32, 3, 1), (16, 32, 1, 2),
        (32, 64, 3, 2), (64, 64, 3, 1), (32, 64, 1, 2)}
    assert len(r50) == 22 and all(lay['N'] == 32 for lay in r50)
    assert max(lay['O'] for lay in r50) == 2048


def test_benchmark_runs_and_reports(tmp_path, run_tool):
    """One small layer end to end: every column is filled and consistent,
    the table lands in its markdown section with the machine line and the
    ADDER_MM_* switches it ran under."""
    out = tmp_path / 'bench.json'
    md = tmp_path / 'bench.md'
    md.write_text('# kept\n')
    proc = run_tool([BENCHMARK, '--suite', 'resnet20', '--layers',
                     'layer3.0.down', '--repeat', '2', '--warmup', '0',
                     '--threads', '1', '--batch', '3', '--out', out,
                     '--markdown', md], env={'ADDER_MM_CPU_ISA': 'avx2'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res['env']['threads'] == 1
    lay, = res['layers']
    assert lay['name'] == 'layer3.0.down' and lay['N'] == 3
    for key in ('adder_fwd_ms', 'conv_fwd_ms', 'adder_fwdbwd_ms',
                'conv_fwdbwd_ms', 'unfold_fwd_ms', 'adder_over_conv_fwd',
                'adder_over_conv_fwdbwd', 'unfold_over_adder_fwd'):
        assert lay[key] > 0, key
    assert lay['unfold_over_adder_fwd'] == pytest.approx(
        lay['unfold_fwd_ms'] / lay['adder_fwd_ms'])
    text = md.read_text()
    assert text.startswith('# kept\n')
    assert '<!-- cpu-float32:begin -->' in text and 'layer3.0.down' in text
    assert 'torch ' + torch.__version__ in text
    assert res['env']['switches']['ADDER_MM_CPU_ISA'] == 'avx2'
    assert 'ADDER_MM_CPU_ISA=avx2' in text


def _sweep_layer(name, fwd, fwdbwd):
    """A made-up tile-sweep result: {shape: ms}, cuDNN 1.0 / 2.0 ms."""
    return dict(name=name, suite='resnet50', N=32, C=64, H=56, W=56, O=64,
                k=3, stride=1, pad=1, conv_fwd_ms=1.0, conv_fwdbwd_ms=2.0,
                tile_fwd_ms=fwd, tile_fwdbwd_ms=fwdbwd)


def test_tile_sweep_summary():
    """The fastest shape per layer for the forward and for the backward
    (f+b less forward), adder/cuDNN median / max of each way of choosing."""
    from adder_mm.analysis import benchmark as bench

    # backward: auto a 3.0, b 3.0; tile 0: a 2.5, b 2.0; tile 2: a 4.5, b 3.0
    results = [
        _sweep_layer('a', {'auto': 2.0, '0': 2.0, '2': 1.5},
                     {'auto': 5.0, '0': 4.5, '2': 6.0}),
        _sweep_layer('b', {'auto': 3.0, '0': 4.0, '2': 2.0},
                     {'auto': 6.0, '0': 6.0, '2': 5.0})]
    rows, ways = bench.tile_sweep_summary(results)
    assert [(r['name'], kf, kb) for r, _, kf, kb in rows] == [
        ('a', '2', '0'), ('b', '2', '0')]
    assert [t_b for _, t_b, _, _ in rows] == [
        {'auto': 3.0, '0': 2.5, '2': 4.5}, {'auto': 3.0, '0': 2.0, '2': 3.0}]
    want = {'auto': ((2.5, 3.0), (2.75, 3.0)),
            '0': ((3.0, 4.0), (2.625, 3.0)),
            '2': ((1.75, 2.0), (2.75, 3.0)),
            # a: forward tile 2 (1.5) + backward tile 0 (2.5) = 4.0 -> 2.0;
            # b: 2.0 + 2.0 -> 2.0
            'best': ((1.75, 2.0), (2.0, 2.0))}
    assert list(ways) == list(want)
    for k, (f, fb) in want.items():
        assert ways[k]['fwd'] == pytest.approx(f), k
        assert ways[k]['fwdbwd'] == pytest.approx(fb), k
    text = bench.tile_sweep_markdown(results)
    assert '- best per layer (forward and backward apart): forward 1.75 / ' \
        '2.00, forward+backward 2.00 / 2.00' in text
    table = [[c.strip() for c in line.strip('| ').split('|')]
             for line in text.splitlines() if line.startswith('| res')]
    # suite, layer, shape, fwd auto, 0, 2, fastest, auto/best, bwd auto, 0,
    # 2, fastest, auto/best
    assert [r[6:8] + r[11:] for r in table] == [['2', '1.33', '0', '1.20'],
                                                 ['2', '1.50', '0', '1.50']]
    assert bench.tile_sweep_markdown([]) == ''


def test_tile_sweep_mode_runs_and_restores_env(tmp_path, monkeypatch,
                                               run_tool, tool_module):
    """benchmark_adder.py's tile-sweep mode end to end on the CPU (the
    variable is inert there; the parser keeps the mode CUDA-only): every
    name timed, ADDER_MM_CUDA_TILE restored, JSON and markdown written."""
    import argparse

    from adder_mm.analysis import benchmark as bench
    tool = tool_module(BENCHMARK)
    monkeypatch.setenv(bench.TILE_ENV, '1')
    args = argparse.Namespace(
        device='cpu', dtype='float32', tile_sweep=[2, 0], repeat=1,
        warmup=0, batch=2, out=str(tmp_path / 'tiles.json'),
        markdown=str(tmp_path / 'b.md'), section='tiles')
    results = tool.main_tiles(args, ['resnet20'], {'layer1.0.conv1'},
                              torch.float32)
    assert os.environ[bench.TILE_ENV] == '1'
    monkeypatch.delenv(bench.TILE_ENV)
    (r, ) = results
    for what in ('fwd', 'fwdbwd'):
        assert list(r[f'tile_{what}_ms']) == ['auto', '2', '0']
        assert all(v > 0 for v in r[f'tile_{what}_ms'].values())
        assert r[f'conv_{what}_ms'] > 0
    saved = json.loads((tmp_path / 'tiles.json').read_text())
    assert set(saved['summary']) == {'auto', '2', '0', 'best'}
    md = (tmp_path / 'b.md').read_text()
    assert '| resnet20 | layer1.0.conv1 |' in md and 'tile sweep' in md
    bench.bench_tile_sweep(r, [3], 'cpu', torch.float32, 1, 0)
    assert bench.TILE_ENV not in os.environ
    for bad, says in ((['--device', 'cuda', '--tile-sweep', '2,5'],
                       'distinct tile shapes 0..3'),
                      (['--device', 'cuda', '--tile-sweep', '1,1'],
                       'distinct tile shapes 0..3'),
                      (['--tile-sweep', '2'], 'CUDA only'),
                      (['--device', 'cuda', '--tile-sweep', '2',
                        '--model-step'], 'replaces the layer table')):
        proc = run_tool([BENCHMARK] + bad)
        assert proc.returncode == 2 and says in proc.stderr, bad


def test_benchmark_json_keeps_layers_of_a_run_cut_short(tmp_path,
                                                      monkeypatch,
                                                      tool_module):
    """--out is rewritten after every layer: a run stopped by a time cap
    (gpu_check.sh's steps) keeps the layers it finished."""
    tool = tool_module(BENCHMARK)
    real, calls = tool.bench_layer, []

    def stop_at_second(lay, *args):
        calls.append(lay['name'])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a timeout's signal would
        return real(lay, *args)

    monkeypatch.setattr(tool, 'bench_layer', stop_at_second)
    out = tmp_path / 'b.json'
    with pytest.raises(KeyboardInterrupt):
        tool.main(['--suite', 'resnet20', '--batch', '2', '--repeat', '1',
                   '--warmup', '0', '--no-unfold', '--out', str(out)])
    saved = json.loads(out.read_text())
    assert [r['name'] for r in saved['layers']] == calls[:1]
    assert saved['summary']['adder_over_conv_fwd']['count'] == 1


def test_interleaved_times_alternates_calls():
    from adder_mm.analysis import benchmark as bench
    calls = []
    medians, ratios = bench.interleaved_times(
        [lambda: calls.append('a'), lambda: calls.append('b')], 'cpu', 3, 1)
    assert calls == ['a', 'b'] * 4
    assert len(medians) == 2 and len(ratios) == 1 and ratios[0] > 0


def test_benchmark_resnet20_is_adder_resnet_cifar():
    """--model-step's ResNet-20 (torch alone) has AdderResNet_CIFAR's layers
    and parameters."""
    from adder_mm.analysis import benchmark as bench
    pytest.importorskip('mmpretrain')
    from adder_mm.models import AdderConv2d, AdderResNet_CIFAR
    ours = AdderResNet_CIFAR(depth=20)
    for adder in (True, False):
        net = bench.resnet20_torch(adder)
        assert (sum(p.numel() for p in net.parameters()) ==
                sum(p.numel() for p in ours.parameters()))
        kinds = [type(m) for m in net.modules()]
        # stem + 18 block convs + 2 strided shortcuts; the stem stays a conv
        assert kinds.count(torch.nn.Conv2d) == (1 if adder else 21)
        assert kinds.count(AdderConv2d) == (20 if adder else 0)
    x = torch.randn(2, 3, 32, 32)
    assert bench.resnet20_torch(True)(x).shape == ours(x)[-1].shape


def test_benchmark_models_use_the_real_layer():
    """--model-step times ResNet-20/50 built from AdderConv2d with torch
    alone (no torchvision or OpenMMLab: the GPU machine has torch only);
    ResNet-50 has torchvision's parameter count and the layers of the
    resnet50 suite."""
    from adder_mm.analysis import benchmark as bench
    from adder_mm.models.layers import AdderConv2d
    for adder in (True, False):
        # torchvision's ResNet-50 has 25,557,032 parameters
        r50 = bench.resnet50_torch(adder)
        assert sum(p.numel() for p in r50.parameters()) == 25_557_032
        kinds = [type(m) for m in r50.modules()]
        assert kinds.count(AdderConv2d) == (52 if adder else 0)
        assert kinds.count(torch.nn.Conv2d) == (1 if adder else 53)
    # its adder layers are those the --suite resnet50 table times
    seen = set()

    def record(m, inputs, out):
        x = inputs[0]
        seen.add((x.shape[1], x.shape[2], m.out_channels, m.kernel_size[0],
                  m.stride[0], m.padding[0]))

    r50 = bench.resnet50_torch(True)
    for m in r50.modules():
        if isinstance(m, AdderConv2d):
            m.register_forward_hook(record)
    with torch.no_grad():
        assert r50(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert seen == {(lay['C'], lay['H'], lay['O'], lay['k'], lay['stride'],
                     lay['pad']) for lay in bench.resnet50_layers(1)}
    out = bench.bench_model_step('resnet20', 'cpu', torch.float32, 1, 0,
                                 batch=4)
    assert out['adder_step_ms'] > 0 and out['conv_step_ms'] > 0
    out = bench.bench_model_step('resnet20', 'cpu', torch.bfloat16, 1, 0,
                                 batch=4)
    assert out['amp'] == 'bfloat16'

