"""CUDA kernels of adder2d against the pure-PyTorch reference.

Needs a GPU and adder_mm._ext built with CUDA; skips otherwise (the reason
names ext_info()). Some tests need no GPU: one runs the kernels' per-thread
code on the host (tests/csrc/adder2d_cuda_emulate.cpp) with a C++ compiler,
others check the float16/bfloat16 error bounds against emulated results.

Imports only torch, pytest and adder_mm.ops, so it runs on a GPU machine
without OpenMMLab: ``python -m pytest --noconftest tests/test_ops_cuda.py``
(tools/gpu_check.sh adds ``-m cuda``: only the tests that need the GPU).

Runtime: about 40 s on a 2-core CPU machine (the tests without a GPU; the
rest skips); about that plus a few seconds on an H100.
"""
import contextlib
import json
import os
import os.path as osp
import random
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

from adder_mm.ops import adder2d, adder2d_reference, ext_info

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
_INFO = ext_info()
_NO_GPU = not torch.cuda.is_available()
_NO_KERNELS = not _INFO['cuda']
# The tile shapes of csrc/common/adder2d_cuda_kernels.cuh, forced in turn
# through ADDER_MM_CUDA_TILE so small inputs reach every one of them.
_TILES = ('0', '1', '2', '3')


def requires_cuda(fn):
    fn = pytest.mark.skipif(
        _NO_KERNELS, reason='adder_mm._ext has no CUDA kernels (ext_info() = '
        f'{_INFO}); build with FORCE_CUDA=1')(fn)
    fn = pytest.mark.skipif(
        _NO_GPU, reason='needs a CUDA GPU (torch.cuda.is_available() is '
        'False)')(fn)
    return pytest.mark.cuda(fn)


@contextlib.contextmanager
def _env(name, value):
    """Set (or, for None, unset) one environment variable for a block."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _tile(tile):
    """Force one tile shape of the CUDA kernels (None: automatic choice)."""
    return _env('ADDER_MM_CUDA_TILE', tile)


@contextlib.contextmanager
def _exact_fp32():
    """No TF32 in cuDNN's weight gradient (grad_W), deterministic algos."""
    flags = (torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = flags


def _random_cases(count, seed):
    """Random layer configurations covering every argument of adder2d."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        groups = rng.choice([1, 1, 2, 3])
        kh, kw = rng.randint(1, 4), rng.randint(1, 4)
        c = dict(
            n=rng.choice([1, 2, 3]),
            cin=groups * rng.randint(1, 6),
            cout=groups * rng.randint(1, 7),
            h=rng.randint(1, 13),
            w=rng.randint(1, 13),
            kernel=(kh, kw),
            stride=(rng.randint(1, 3), rng.randint(1, 3)),
            padding=(rng.randint(0, 2), rng.randint(0, 2)),
            dilation=(rng.randint(1, 2), rng.randint(1, 2)),
            groups=groups,
            bias=rng.random() < 0.5)
        if (c['dilation'][0] * (kh - 1) + 1 > c['h'] + 2 * c['padding'][0]
                or c['dilation'][1] * (kw - 1) + 1 >
                c['w'] + 2 * c['padding'][1]):
            continue
        cases.append(c)
    return cases


# Fixed shapes the random ones may miss: several row tiles (cout 130, cin 40),
# reduction tails (cin not a multiple of 8 or 16), ResNet-like 3x3 and
# strided 1x1 shortcut (taps that reach no pixel), depthwise.
_FIXED_CASES = [
    dict(n=2, cin=16, cout=16, h=8, w=8, kernel=(3, 3), stride=(1, 1),
         padding=(1, 1), dilation=(1, 1), groups=1, bias=False),
    dict(n=2, cin=16, cout=32, h=9, w=9, kernel=(1, 1), stride=(2, 2),
         padding=(0, 0), dilation=(1, 1), groups=1, bias=False),
    dict(n=1, cin=40, cout=130, h=7, w=6, kernel=(3, 3), stride=(1, 1),
         padding=(1, 1), dilation=(1, 1), groups=1, bias=True),
    dict(n=1, cin=140, cout=24, h=5, w=4, kernel=(3, 1), stride=(2, 1),
         padding=(1, 0), dilation=(1, 1), groups=2, bias=False),
    dict(n=3, cin=8, cout=8, h=6, w=7, kernel=(3, 3), stride=(1, 1),
         padding=(2, 2), dilation=(2, 2), groups=8, bias=True),
]


def _conf(c):
    return dict(stride=c['stride'], padding=c['padding'],
                dilation=c['dilation'], groups=c['groups'])


def _make(c, dtype, device, seed=0):
    """Inputs of one case: x, weight, bias (or None), grad_out."""
    gen = torch.Generator().manual_seed(seed)
    kh, kw = c['kernel']
    x = torch.randn(c['n'], c['cin'], c['h'], c['w'], generator=gen,
                    dtype=torch.float64)
    # Weight scale 0.7: |W - X| straddles 1, so both HardTanh branches count.
    w = 0.7 * torch.randn(c['cout'], c['cin'] // c['groups'], kh, kw,
                          generator=gen, dtype=torch.float64)
    b = (torch.randn(c['cout'], generator=gen, dtype=torch.float64)
         if c['bias'] else None)
    oh = (c['h'] + 2 * c['padding'][0] - c['dilation'][0] *
          (kh - 1) - 1) // c['stride'][0] + 1
    ow = (c['w'] + 2 * c['padding'][1] - c['dilation'][1] *
          (kw - 1) - 1) // c['stride'][1] + 1
    g = torch.randn(c['n'], c['cout'], oh, ow, generator=gen,
                    dtype=torch.float64)

    def cast(t):
        return None if t is None else t.to(device=device, dtype=dtype)

    return cast(x), cast(w), cast(b), cast(g)


def _run(fn, x, w, b, g, conf):
    """Output and gradients (x, weight, bias) of fn(...).backward(g)."""
    # detach() keeps the strides (a clone of a strided view would not).
    x = x.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    if b is not None:
        b = b.detach().requires_grad_(True)
    out = fn(x, w, b, **conf)
    out.backward(g)
    return [out.detach(), x.grad, w.grad, None if b is None else b.grad]


def _reference(c, x, w, b, g):
    """The oracle: adder2d_reference in float64 on the CPU."""
    to64 = [None if t is None else t.detach().cpu().double()
            for t in (x, w, b, g)]
    return _run(adder2d_reference, *to64, _conf(c))


_NAMES = ('output', 'grad_input', 'grad_weight', 'grad_bias')

# Unit roundoff u (half an ulp, relative: |round(v) - v| <= u |v|) of the
# half dtypes, and of the float32 the kernels accumulate in.
_UNIT = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
_U_ACC = 2.0**-24
# Half the spacing of float16's subnormals (bfloat16's are finer).
_TINY = 2.0**-25


def _half_bounds(c, x, w, b, g, want, partial=None):
    """Per-element error bounds of adder2d's output and gradients in float16
    or bfloat16 on the CUDA path, from its roundings and float32
    accumulation. A missing term (one tap of one channel) exceeds them at
    any output size; a bound scaled by the tensor's largest value (rtol 1e-2
    or 5e-2 of about 140) let it through.

    x, w, b, g: the rounded inputs; want: the float64 reference results.
    With u the dtype's unit roundoff, u32 float32's, and S an element's sum
    of the absolute values of its terms:
      output       K + 1 float32 roundings of partial sums of |x - w|
                   ((K + 1) u32 S), one to the dtype (u S), then the bias
                   added in the dtype (u |y|);
      grad_input   float32 sums of the n = (Cout/G) KH KW terms sat(.) g and
                   of g, the clamp argument 0.5 w + 0.5 - 0.5 x rounded in
                   float32 (2 u32 (1 + |w| + |x|) |g| per term, allowed
                   twice), one rounding of 2 acc - sum g (u |gX|);
      grad_weight  the vendor's sum of x g over the positions rounded to the
                   dtype (u S_xg, allowed twice: its internal roundings are
                   its own), w sum g and the difference in float32, one
                   rounding (u |gW|);
      grad_bias    a float32 sum of g, one rounding.
    partial: the packed kernels' (ADDER_MM_CUDA_HALF2=1) terms per 16-bit
    partial sum; each of its roundings is within u of the partial, so the
    sums gain P u S (forward: also u per subtraction; grad_input: 2 P u S for
    the doubled sat(.) g sum, P u S for the sum of g, and the 16-bit clamp
    argument, u (1 + |w| + |x|) |g| per term, doubled).
    Each bound is a float64 CPU tensor shaped like its result.
    """
    u, ua = _UNIT[x.dtype], _U_ACC
    conf = _conf(c)
    x, w, g = (t.detach().cpu().double() for t in (x, w, g))
    kh, kw = c['kernel']
    k_fwd = c['cin'] // c['groups'] * kh * kw
    k_bwd = c['cout'] // c['groups'] * kh * kw
    positions = g.shape[0] * g.shape[2] * g.shape[3]
    y, gx, gw, gb = (None if t is None else t.abs() for t in want)

    s_y = adder2d_reference(x, w, None, **conf).neg_()
    acc_y = (k_fwd + 1) * ua * s_y
    if partial:
        acc_y = acc_y + (partial + 1) * u * s_y
    tol_y = acc_y + u * (s_y + acc_y) + _TINY
    if b is not None:
        tol_y = tol_y + u * (y + tol_y)

    s_gx = torch.nn.grad.conv2d_input(x.shape, torch.ones_like(w), g.abs(),
                                      **conf)
    big = max(x.abs().max().item(), w.abs().max().item(), 1.0)
    acc_gx = ua * s_gx * (3 * k_bwd + 12 * big)
    if partial:
        acc_gx = acc_gx + u * s_gx * (3 * partial + 6 * big)
    tol_gx = acc_gx + u * (gx + acc_gx) + _TINY

    s_g = g.abs().sum((0, 2, 3))
    s_xg = torch.nn.grad.conv2d_weight(x.abs(), w.shape, g.abs(), **conf)
    acc_gw = ua * (positions + 2) * (s_xg + w.abs() * s_g.view(-1, 1, 1, 1))
    tol_gw = acc_gw + u * (2 * s_xg + gw + acc_gw) + _TINY

    tol_gb = None
    if b is not None:
        acc_gb = positions * ua * s_g
        tol_gb = acc_gb + u * (gb + acc_gb) + _TINY
    return [tol_y, tol_gx, tol_gw, tol_gb]


def _compare_within(got, want, tols, what):
    """Every element of got within its own bound of the float64 want."""
    for name, a, e, tol in zip(_NAMES, got, want, tols):
        if e is None:
            assert a is None, f'{what}: {name} should be None'
            continue
        assert a is not None, f'{what}: {name} missing'
        assert torch.isfinite(a).all(), f'{what}: {name} has NaN/inf'
        err = (a.detach().cpu().double() - e).abs()
        ratio = err / tol
        worst = int(ratio.argmax())
        assert ratio.max().item() <= 1.0, (
            f'{what}: {name}: {int((ratio > 1).sum())} of {ratio.numel()} '
            f'elements outside their bound; worst at flat index {worst}: got '
            f'{a.flatten()[worst].item()}, want {e.flatten()[worst].item()}, '
            f'error {err.flatten()[worst].item():.3g} > bound '
            f'{tol.flatten()[worst].item():.3g}')


def _compare(got, want, rtol, atol_rel, what):
    for name, a, e in zip(_NAMES, got, want):
        if e is None:
            assert a is None, f'{what}: {name} should be None'
            continue
        assert a is not None, f'{what}: {name} missing'
        assert torch.isfinite(a).all(), f'{what}: {name} has NaN/inf'
        atol = atol_rel * max(1.0, e.abs().max().item())
        torch.testing.assert_close(
            a.detach().cpu().double(), e, rtol=rtol, atol=atol,
            msg=lambda m, n=name: f'{what}: {n}: {m}')


# ---- tests that need no GPU -------------------------------------------------


def _cxx():
    return shutil.which(os.environ.get('CXX', 'g++')) or shutil.which('c++')


@pytest.mark.skipif(_cxx() is None,
                    reason='no C++ compiler (g++ / c++ / $CXX) on PATH')
def test_tile_logic_host_emulation():
    """The kernels' per-thread code, stepped on the host, matches the
    formulas for every tile shape (tiling, strides classes, padding, tails,
    double-buffer hazards)."""
    src = osp.join(ROOT, 'tests', 'csrc', 'adder2d_cuda_emulate.cpp')
    with tempfile.TemporaryDirectory() as tmp:
        exe = osp.join(tmp, 'emulate')
        build = subprocess.run(
            [_cxx(), '-O1', '-std=c++17', '-Wall', '-Wextra',
             '-I', osp.join(ROOT, 'csrc', 'common'), src, '-o', exe],
            capture_output=True, text=True)
        assert build.returncode == 0, build.stderr[-4000:]
        run = subprocess.run([exe], capture_output=True, text=True,
                             timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert run.stdout.startswith('OK'), run.stdout[-2000:]


# The longest 16-bit partial sum of the packed kernels: one reduction chunk
# (BK = 16 for the narrowest tiles, 8 for the others).
_PACKED_PARTIAL = 16

# ResNet-50 layer4 3x3 (K = 9 * 512 = 4608) at batch 2, fewer output channels.
_K4608 = dict(n=2, cin=512, cout=40, h=7, w=7, kernel=(3, 3), stride=(1, 1),
              padding=(1, 1), dilation=(1, 1), groups=1, bias=True)


def _window(c):
    """unfold/fold arguments of a case (groups = 1)."""
    return dict(kernel_size=c['kernel'], dilation=c['dilation'],
                padding=c['padding'], stride=c['stride'])


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_bounds_pass_rounding_and_catch_dropped_terms(dtype):
    """The bounds of test_half_and_bfloat16, on the CPU: the results a
    correct CUDA kernel makes (float32 sums of the rounded inputs, rounded
    once, the bias added in the dtype) are within them; the same results with
    terms left out of the forward or of the input gradient are not. Left out:
    at K = 360 one tap of one channel (|w - x| ~ 1 on outputs ~ 400); at
    K = 4608 (outputs ~ 5000, an ulp of 4 in float16 and 32 in bfloat16) one
    reduction chunk of the kernels (one tap of 8 channels) in float16 and one
    tap of every channel in bfloat16. The former tolerance (rtol = 1e-2 or
    5e-2, atol the same times the largest value) passes the forward's one
    tap."""
    small = dict(n=2, cin=40, cout=24, h=7, w=6, kernel=(3, 3),
                 stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                 bias=True)
    big = {torch.float16: range(16, 24), torch.bfloat16: range(512)}[dtype]
    # Output channel 3, centre tap (never padding), these input channels.
    for k, (c, channels) in enumerate(((small, [17]), (_K4608, big))):
        conf = _conf(c)
        x, w, b, g = _make(c, dtype, 'cpu', seed=300 + k)
        want = _reference(c, x, w, b, g)
        tols = _half_bounds(c, x, w, b, g, want)
        x32, w32, g32 = (t.float() for t in (x, w, g))
        x32.requires_grad_()
        acc = adder2d_reference(x32, w32, None, **conf)
        acc_gx, = torch.autograd.grad(acc, x32, g32)
        acc, x32 = acc.detach(), x32.detach()

        def emulate(y32, gx32):
            y = y32.to(dtype) + b.view(1, -1, 1, 1)
            return [y, gx32.to(dtype), want[2], want[3]]

        # Correct: within every bound.
        _compare_within(emulate(acc, acc_gx), want, tols, f'{dtype} {c}')

        o, rows = 3, [ch * 9 + 4 for ch in channels]
        cols = torch.nn.functional.unfold(x32, **_window(c))[:, rows]
        w_rows = w32[o].flatten()[rows].view(1, -1, 1)
        y_drop = acc.clone()  # -sum loses the terms |w - x|
        y_drop[:, o] += (w_rows - cols).abs().sum(1).view(y_drop[:, o].shape)
        dx = torch.zeros(cols.shape[0], w32[0].numel(), cols.shape[2])
        dx[:, rows] = (w_rows - cols).clamp(-1, 1) * g32[:, o:o + 1].flatten(2)
        dx = torch.nn.functional.fold(dx, x32.shape[2:], **_window(c))
        for got, name in ((emulate(y_drop, acc_gx), 'output'),
                          (emulate(acc, acc_gx - dx), 'grad_input')):
            with pytest.raises(AssertionError, match=name):
                _compare_within(got, want, tols, f'{dtype} {c} dropped')
        if c is not small:
            continue
        # The former tolerance did not see the forward's one tap.
        tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
        torch.testing.assert_close(
            emulate(y_drop, acc_gx)[0].double(), want[0], rtol=tol,
            atol=tol * want[0].abs().max().item())


def _packed_emulation(c, x, w, b, g, partial):
    """What the packed kernels compute, in torch on the CPU (groups = 1,
    stride 1): per tap, 16-bit partial sums over chunks of `partial`
    channels (each step rounded), added into float32; output and input
    gradient as the kernels round them."""
    dt, win = x.dtype, _window(c)
    n, cin, o, kk = x.shape[0], x.shape[1], w.shape[0], w[0, 0].numel()
    cols = torch.nn.functional.unfold(x.float(), **win).to(dt)  # exact
    xh = torch.nn.functional.unfold((0.5 * x.float()).to(dt).float(),
                                    **win).to(dt)
    a = (0.5 * w.float() + 0.5).to(dt).flatten(1)
    w2, g2 = w.flatten(1), g.flatten(2)
    length = cols.shape[2]
    acc = torch.zeros(n, o, length)
    acc_g, g_sum = torch.zeros(n, cin * kk, length), torch.zeros(
        n, cin * kk, length)
    for t in range(kk):
        for c0 in range(0, cin, partial):
            part = torch.zeros(n, o, length, dtype=dt)
            for ch in range(c0, min(cin, c0 + partial)):
                part = part + (w2[:, ch * kk + t].view(1, o, 1) -
                               cols[:, ch * kk + t].unsqueeze(1)).abs()
            acc += part.float()
        for o0 in range(0, o, partial):
            part = torch.zeros(n, cin, length, dtype=dt)
            g_part = torch.zeros(n, cin, length, dtype=dt)
            for oo in range(o0, min(o, o0 + partial)):
                sat = (a[oo, t::kk].view(1, cin, 1) - xh[:, t::kk]).clamp(0, 1)
                part = torch.addcmul(part, sat, g2[:, oo:oo + 1])
                g_part = g_part + g2[:, oo:oo + 1]
            acc_g[:, t::kk] += part.float()
            g_sum[:, t::kk] += g_part.float()
    y = (-acc).to(dt).view(g.shape) + b.view(1, -1, 1, 1)
    fold = torch.nn.functional.fold
    gx = 2 * fold(acc_g, x.shape[2:], **win) - fold(g_sum, x.shape[2:], **win)
    return [y, gx.to(dt), None, None]


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_packed_bounds_cover_emulated_partials(dtype):
    """The bounds test_packed_half2_kernels allows the packed kernels hold,
    with room, for their arithmetic emulated in torch (16-term partials),
    K = 144 to 4608."""
    for k, c in enumerate((_FIXED_CASES[0], dict(_FIXED_CASES[2], cout=24),
                           _K4608)):
        c = dict(c, bias=True)
        x, w, b, g = _make(c, dtype, 'cpu', seed=500 + k)
        want = _reference(c, x, w, b, g)
        tols = _half_bounds(c, x, w, b, g, want, partial=_PACKED_PARTIAL)
        got = _packed_emulation(c, x, w, b, g, _PACKED_PARTIAL)
        for i in (0, 1):
            ratio = ((got[i].double() - want[i]).abs() / tols[i]).max()
            assert ratio <= 0.5, f'{dtype} {c}: {_NAMES[i]} at {ratio:.3f}'


def test_speed_targets_report(tmp_path):
    """tools/analysis_tools/speed_targets.py (gpu_check.sh's targets.txt) on
    made-up benchmark files: PASS/MISS at the limits, '?' where a file is
    missing, the float16 speed-up as float32 time over float16 time."""
    def layer(name, suite, fwd, fwdbwd, ms):
        return dict(name=name, suite=suite, adder_over_conv_fwd=fwd,
                    adder_over_conv_fwdbwd=fwdbwd, adder_fwdbwd_ms=ms)

    def write(name, **obj):
        (tmp_path / name).write_text(json.dumps(obj))

    write('benchmark.json',
          layers=[layer('a', 'resnet20', 1.5, 1.4, 1.0),
                  layer('b', 'resnet50', 2.6, 1.8, 10.0),
                  layer('c', 'resnet50', 2.0, 2.4, 20.0)],
          model_step=dict(adder_over_conv_step=1.10))
    write('benchmark_fp16.json', layers=[layer('b', 'resnet50', 0, 0, 5.0),
                                         layer('c', 'resnet50', 0, 0, 20.0)])
    write('step_resnet50_float16.json',
          model_step=dict(adder_over_conv_step=3.5))
    script = osp.join(ROOT, 'tools', 'analysis_tools', 'speed_targets.py')
    run = subprocess.run([sys.executable, script, str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    want = [
        'MISS  fp32 forward max over layers vs cuDNN: 2.60 (<= 2.5)',
        'PASS  fp32 forward median vs cuDNN: 2.00 (<= 2.0)',
        'PASS  fp32 forward+backward max over layers vs cuDNN: 2.40 (<= 2.5)',
        'PASS  fp32 forward+backward median vs cuDNN: 1.80 (<= 2.0)',
        'PASS  ResNet-20 step vs CNN (fp32): 1.10 (<= 1.15)',
        # gains 10/5 = 2.0 and 20/20 = 1.0: median 1.5
        'MISS  fp16 f+b speed-up over our fp32 (ResNet-50 median): 1.50 '
        '(>= 1.6)',
        '?     fp16 packed f+b speed-up over our fp32 (ResNet-50 median): '
        'not measured',
        '?     ResNet-50 step vs CNN (float32): not measured',
        '?     ResNet-50 step vs CNN (bfloat16): not measured',
        'MISS  ResNet-50 step vs CNN (float16): 3.50 (<= 3.0)',
    ]
    assert lines[:len(want)] == want
    assert len(lines) == len(want) + 2  # the two packed steps: not measured
    missing = subprocess.run([sys.executable, script,
                              str(tmp_path / 'nowhere')],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and 'no folder' in missing.stderr


# ---- CUDA tests -------------------------------------------------------------


@requires_cuda
def test_float64_parity_every_tile():
    """Forward and all three gradients match the float64 reference (random
    and fixed shapes, every tile shape)."""
    cases = _random_cases(14, seed=3) + _FIXED_CASES
    with _exact_fp32():
        for k, c in enumerate(cases):
            x, w, b, g = _make(c, torch.float64, 'cuda', seed=k)
            want = _reference(c, x, w, b, g)
            # float64 uses one tile shape: the forced one is ignored.
            got = _run(adder2d, x, w, b, g, _conf(c))
            _compare(got, want, 1e-9, 1e-9, f'float64 case {k} {c}')


@requires_cuda
def test_float32_parity_every_tile():
    cases = _random_cases(10, seed=5) + _FIXED_CASES
    with _exact_fp32():
        for k, c in enumerate(cases):
            x, w, b, g = _make(c, torch.float32, 'cuda', seed=100 + k)
            want = _reference(c, x, w, b, g)
            for tile in _TILES + (None, ):
                with _tile(tile):
                    got = _run(adder2d, x, w, b, g, _conf(c))
                _compare(got, want, 1e-4, 2e-5,
                         f'float32 tile {tile} case {k} {c}')


@requires_cuda
def test_half_and_bfloat16():
    """fp16/bf16 in, same dtype out; float32 accumulation keeps every element
    within the bound of its roundings (_half_bounds), K up to 4608."""
    cases = _random_cases(4, seed=7) + _FIXED_CASES[:3] + [_K4608]
    with _exact_fp32():
        for dtype in (torch.float16, torch.bfloat16):
            for k, c in enumerate(cases):
                x, w, b, g = _make(c, dtype, 'cuda', seed=200 + k)
                # The reference sees the same rounded inputs.
                want = _reference(c, x, w, b, g)
                tols = _half_bounds(c, x, w, b, g, want)
                for tile in ('0', '3', None):
                    with _tile(tile):
                        got = _run(adder2d, x, w, b, g, _conf(c))
                    for name, t in zip(_NAMES, got):
                        assert t is None or t.dtype == dtype, (
                            f'{dtype} case {k}: {name} is {t.dtype}')
                    _compare_within(got, want, tols,
                                    f'{dtype} tile {tile} case {k} {c}')


@requires_cuda
def test_packed_half2_kernels():
    """ADDER_MM_CUDA_HALF2=1: the packed float16/bfloat16 kernels, every tile
    shape, against the float64 reference within the bounds of their 16-bit
    partial sums (their exact arithmetic is checked bit for bit by the host
    emulation), deterministic, and really another path than the float one
    (the results differ from it somewhere at K = 4608)."""
    cases = _random_cases(4, seed=9) + _FIXED_CASES + [_K4608]
    dtypes = [torch.float16]
    if torch.cuda.get_device_capability()[0] >= 8:
        dtypes.append(torch.bfloat16)  # bfloat16 pairs need sm_80
    with _exact_fp32():
        for dtype in dtypes:
            for k, c in enumerate(cases):
                x, w, b, g = _make(c, dtype, 'cuda', seed=400 + k)
                want = _reference(c, x, w, b, g)
                tols = _half_bounds(c, x, w, b, g, want,
                                    partial=_PACKED_PARTIAL)
                with _env('ADDER_MM_CUDA_HALF2', '1'):
                    for tile in _TILES + (None, ):
                        with _tile(tile):
                            got = _run(adder2d, x, w, b, g, _conf(c))
                        _compare_within(got, want, tols,
                                        f'packed {dtype} tile {tile} {c}')
                    again = _run(adder2d, x, w, b, g, _conf(c))
                for name, a, e in zip(_NAMES, again, got):
                    assert e is None or torch.equal(a, e), (
                        f'packed {dtype} {c}: {name} changed between runs')
            with _env('ADDER_MM_CUDA_HALF2', None):
                plain = _run(adder2d, x, w, b, g, _conf(c))
            for name in ('output', 'grad_input'):
                i = _NAMES.index(name)
                assert not torch.equal(plain[i], got[i]), (
                    f'{dtype}: {name} of the packed path equals the float '
                    'path bit for bit at K = 4608: packed kernels not run?')


@requires_cuda
def test_deterministic():
    """Bit-identical output and gradients run to run (cuDNN's grad_W in
    deterministic mode)."""
    c = dict(n=4, cin=32, cout=48, h=20, w=20, kernel=(3, 3), stride=(1, 1),
             padding=(1, 1), dilation=(1, 1), groups=1, bias=True)
    with _exact_fp32():
        for dtype in (torch.float32, torch.float16):
            x, w, b, g = _make(c, dtype, 'cuda', seed=11)
            first = _run(adder2d, x, w, b, g, _conf(c))
            for _ in range(2):
                again = _run(adder2d, x, w, b, g, _conf(c))
                for name, a, e in zip(_NAMES, again, first):
                    assert torch.equal(a, e), f'{dtype}: {name} changed'


@requires_cuda
def test_zero_batch():
    c = dict(_FIXED_CASES[0], n=0)
    x, w, b, g = _make(c, torch.float32, 'cuda')
    out, gx, gw, _ = _run(adder2d, x, w, b, g, _conf(c))
    assert out.shape == (0, 16, 8, 8)
    assert gx.shape == x.shape
    assert torch.equal(gw, torch.zeros_like(w))


@requires_cuda
def test_empty_image_with_padding():
    """H = 0 with padding: every tap reads zero padding, Y = -sum |W|."""
    x = torch.zeros(2, 3, 0, 4, device='cuda')
    w = torch.randn(5, 3, 1, 1, device='cuda')
    out = adder2d(x, w, padding=1)
    assert out.shape == (2, 5, 2, 6)
    want = -w.abs().sum((1, 2, 3)).view(1, 5, 1, 1).expand(2, 5, 2, 6)
    torch.testing.assert_close(out, want)


@requires_cuda
def test_non_contiguous_and_channels_last():
    c = _FIXED_CASES[0]
    x, w, b, g = _make(c, torch.float32, 'cuda', seed=21)
    want = _reference(c, x, w, b, g)
    with _exact_fp32():
        # A strided view holding the same values.
        big = torch.zeros(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3],
                          device='cuda')
        big[..., ::2] = x
        view = big[..., ::2]
        assert not view.is_contiguous()
        _compare(_run(adder2d, view, w, b, g, _conf(c)), want, 1e-4, 2e-5,
                 'strided input')
        cl = x.contiguous(memory_format=torch.channels_last)
        got = _run(adder2d, cl, w, b, g, _conf(c))
        assert got[0].is_contiguous(memory_format=torch.channels_last)
        _compare(got, want, 1e-4, 2e-5, 'channels_last input')


@requires_cuda
def test_large_layer_vs_float64_on_gpu():
    """A ResNet-50-sized layer (several hundred blocks, every tile choice made
    automatically) against the reference run in float64 on the GPU."""
    c = dict(n=4, cin=64, cout=192, h=28, w=28, kernel=(3, 3),
             stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
             bias=False)
    with _exact_fp32():
        x, w, b, g = _make(c, torch.float32, 'cuda', seed=31)
        want = _run(adder2d_reference, x.double(), w.double(), None,
                    g.double(), _conf(c))
        got = _run(adder2d, x, w, b, g, _conf(c))
        _compare(got, [t if t is None else t.cpu() for t in want], 1e-4,
                 2e-5, 'large layer')


@requires_cuda
def test_more_than_2_31_elements():
    """Input and output of 2^31 + 2^16 elements (int64 offsets): a 1x1
    adder is -|x - w| elementwise, its input gradient clamp(w - x) * g."""
    numel = (1 << 31) + (1 << 16)
    free, _ = torch.cuda.mem_get_info()
    need = 4 * numel * 2 + (1 << 30)  # four fp16 tensors of numel at a time
    if free < need:
        msg = (f'needs {need / 2**30:.1f} GiB free on the GPU, has '
               f'{free / 2**30:.1f}')
        pytest.skip(msg)
    x = torch.empty(1, 1, 1 << 15, numel >> 15, dtype=torch.float16,
                    device='cuda')
    x.uniform_(-2, 2)
    w = torch.full((1, 1, 1, 1), 0.25, dtype=torch.float16, device='cuda')
    with torch.no_grad():
        out = adder2d(x, w)
        want = x.sub(0.25).abs_().neg_()
        assert torch.equal(out, want)
        del out, want
        g = torch.ones_like(x)
        gx = torch.ops.adder_mm.adder2d_backward_input(
            g, x, w, [1, 1], [0, 0], [1, 1], 1)
        del g
        want = x.neg().add_(0.25).clamp_(-1, 1)
        assert torch.equal(gx, want)


@requires_cuda
def test_current_stream_and_device_guard():
    """Kernels run on the caller's current stream (no implicit sync)."""
    c = _FIXED_CASES[2]
    x, w, b, g = _make(c, torch.float32, 'cuda', seed=41)
    with _exact_fp32():
        want = _run(adder2d, x, w, b, g, _conf(c))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            got = _run(adder2d, x, w, b, g, _conf(c))
        side.synchronize()
    for name, a, e in zip(_NAMES, got, want):
        assert torch.equal(a, e), f'side stream: {name} differs'
    if torch.cuda.device_count() > 1:
        dev = torch.device('cuda', 1)
        out = adder2d(x.to(dev), w.to(dev), b.to(dev), **_conf(c))
        assert out.device == dev
        assert torch.equal(out.cpu(), want[0].cpu())
