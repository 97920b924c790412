"""Quantization-aware training: the fake quantizer against the integer
grid's codes, QATAdderConv2d against an integer formula, its state, its
calibration, and the conversion to integer layers computing what was
trained."""
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import adder_mm  # noqa: F401
from adder_mm.models import AdderConv2d, QATAdderConv2d
from adder_mm.models.layers import QuantAdderConv2d
from adder_mm.ops import (
    adder2d,
    adder2d_int8_reference,
    fake_quantize_to_grid,
    quantize_to_grid,
)
from adder_mm.quantization import (
    CalibrationError,
    calibrate,
    calibrate_qat,
    quantize_model,
)
from adder_mm.quantization.ptq import input_grid

EPS32 = 2.0**-24  # float32's unit roundoff


def randn(*shape, seed=0, scale=1.):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize('lo, scale, qmax', [(-2.0, 0.25, 15),
                                             (0.0, 0.01, 255),
                                             (-0.75, 0.1, 3)])
def test_fake_quantizer_gives_the_grid_points_of_the_integer_codes(
        lo, scale, qmax):
    x = randn(4000, seed=qmax, scale=2.)  # inside and outside the grid
    y = fake_quantize_to_grid(x, lo, scale, qmax)
    codes = quantize_to_grid(x, lo, scale, qmax).float()
    lo32, scale32 = torch.tensor(lo), torch.tensor(scale)
    assert torch.equal(y, codes * scale32 + lo32)
    # The straight-through gradient: 1 inside the grid, 0 outside.
    x.requires_grad_(True)
    fake_quantize_to_grid(x, lo, scale, qmax).backward(torch.full_like(x, 3))
    hi = lo + scale * qmax
    inside = (x.detach() >= lo) & (x.detach() <= hi)
    assert inside.any() and (~inside).any()
    assert torch.equal(x.grad, torch.where(inside, 3., 0.))


def test_fake_quantizer_keeps_the_dtype_and_refuses_bad_grids():
    x = randn(64, seed=1).double()
    assert fake_quantize_to_grid(x, -1, 0.5, 3).dtype == torch.float64
    assert fake_quantize_to_grid(x.bfloat16(), -1, 0.5, 3).dtype == \
        torch.bfloat16
    for args, message in [((0., 0., 3), 'scale must be positive'),
                          ((float('nan'), 1., 3), 'lo finite'),
                          ((0., 1., 0), 'qmax must be in 1..255'),
                          ((0., 1., 256), 'qmax must be in 1..255')]:
        with pytest.raises(ValueError, match=message):
            fake_quantize_to_grid(x, *args)
    with pytest.raises(TypeError, match='floating point'):
        fake_quantize_to_grid(torch.ones(3, dtype=torch.int32), 0., 1., 3)
    # Checked as the kernels read them: float32 scale, int qmax, numbers.
    for args, message in [((0., 1e-50, 3), 'positive and finite in float32'),
                          ((0., 1., 3.0), 'an int'),
                          (('a', 1., 3), 'lo and scale must be numbers')]:
        with pytest.raises(ValueError, match='^fake_quantize_to_grid: .*' +
                           message):
            fake_quantize_to_grid(x, *args)


def test_fake_quantizer_gradient_is_one_on_the_edges_and_zero_beyond():
    lo, scale, qmax = -1., 0.5, 3  # grid -1 .. 0.5
    x = torch.tensor([-1., 0.5, -1.0001, 0.5001, 0.2, float('inf'),
                      -float('inf')], requires_grad=True)
    y = fake_quantize_to_grid(x, lo, scale, qmax)
    assert torch.equal(y.detach(), torch.tensor([-1., 0.5, -1., 0.5, 0.,
                                                 0.5, -1.]))
    y.backward(torch.full_like(x, 2.))
    assert torch.equal(x.grad, torch.tensor([2., 2., 0., 0., 2., 0., 0.]))


def test_layer_computes_the_integer_sums_on_its_grid():
    """Against exact int sums of the codes: y = bias - scale * S, within
    float32's rounding of K terms (a dropped tap would be off by a term
    of up to qmax * scale)."""
    torch.manual_seed(0)
    layer = QATAdderConv2d(6, 5, 3, stride=2, padding=1, bias=True, bits=4)
    layer.bias.data.normal_()
    lo, scale = -3.0, 0.375  # 0.0 on the grid: padding is exact
    layer.set_grid(lo, scale)
    x = randn(2, 6, 9, 8, seed=2, scale=2.)
    y = layer.eval()(x)
    qx = quantize_to_grid(x, lo, scale, 15)
    qw = quantize_to_grid(layer.weight.detach(), lo, scale, 15)
    pad = int(quantize_to_grid(torch.zeros(1), lo, scale, 15))
    s = adder2d_int8_reference(qx, qw, (2, 2), (1, 1), (1, 1), 1, pad)
    want = layer.bias.double().view(1, -1, 1, 1) - scale * s.double()
    k = 6 * 9
    tol = 4 * k * EPS32 * (15 * scale) + 4 * EPS32 * want.abs().max()
    assert (y.double() - want).abs().max() <= tol
    assert scale < 15 * scale - tol  # one term more or less would show


def test_layer_without_grid_is_the_float_layer_in_eval_and_refuses_training():
    torch.manual_seed(0)
    qat = QATAdderConv2d(4, 6, 3, padding=1, bits=6)
    plain = AdderConv2d(4, 6, 3, padding=1)
    plain.load_state_dict(qat.state_dict(), strict=False)
    x = randn(2, 4, 7, 7)
    assert not qat.calibrated and qat.grid() is None
    assert torch.equal(qat.eval()(x), plain(x))
    with pytest.raises(RuntimeError, match='no quantization grid yet'):
        qat.train()(x)
    with pytest.raises(ValueError, match='bits must be an int in 2..8'):
        QATAdderConv2d(4, 6, 3, bits=9)
    with pytest.raises(ValueError, match='scale must be positive'):
        qat.set_grid(0., -1.)
    assert not qat.calibrated  # the refused grid left nothing set


def test_grid_holds_zero_exactly_and_is_read_in_float32():
    layer = QATAdderConv2d(2, 3, 1, bits=4)
    layer.set_grid(-1.1, 0.25)  # 0.0 would fall between grid points
    assert layer.grid() == (-1.0, 0.25)
    layer.set_grid(*layer.grid())  # the snap is idempotent
    assert layer.grid() == (-1.0, 0.25)
    scale32 = float(torch.tensor(0.1))
    layer.set_grid(-0.3, 0.1)
    assert layer.grid() == (float(torch.tensor(-3 * scale32)), scale32)
    for lo, scale in [(0.5, 0.1), (-2., 0.1)]:  # 0.0 above / below the grid
        with pytest.raises(ValueError, match='must hold 0.0'):
            layer.set_grid(lo, scale)
    with pytest.raises(ValueError, match='positive and finite in float32'):
        layer.set_grid(0., 1e-50)
    assert layer.grid() == (float(torch.tensor(-3 * scale32)), scale32)
    # 0.0 at the top (inputs <= 0), where float32 rounding of lo may put it
    # a hair above the grid: within half a step, it lands on the top point.
    for i in range(50):
        scale = (1 + i / 7) / 15
        layer.set_grid(-15 * scale, scale)
        lo, s32 = layer.grid()
        assert lo + 15 * s32 == 0 or abs(lo / s32 + 15) < 1e-6
    for lo in (-15.6, 0.6):  # more than half a step off
        with pytest.raises(ValueError, match='must hold 0.0'):
            layer.set_grid(lo, 1.)


def test_meta_tensors_take_the_grid_forward():
    layer = QATAdderConv2d(4, 5, 3, padding=1, bits=4)
    layer.set_grid(-1., 0.25)
    y = layer.to('meta')(torch.empty(2, 4, 7, 7, device='meta'))
    assert y.shape == (2, 5, 7, 7) and y.device.type == 'meta'


@pytest.mark.parametrize('cast', ['half', 'bfloat16', 'double'])
def test_a_cast_model_keeps_its_grid_in_float32(cast):
    """Values too: -1.5 + 0.0123 q is neither float16 nor bfloat16."""
    torch.manual_seed(0)
    layer = QATAdderConv2d(4, 5, 3, padding=1, bias=True, bits=8).eval()
    layer.bias.data.normal_()
    layer.set_grid(-1.5, 0.0123)
    grid = layer.grid()
    x = randn(2, 4, 6, 6, seed=3)
    getattr(layer, cast)()
    assert layer.grid_lo.dtype == layer.grid_scale.dtype == torch.float32
    assert layer.grid() == grid
    dtype = layer.weight.dtype
    y = layer(x.to(dtype))
    assert y.dtype == dtype
    want = layer.float()(x.to(dtype).float())  # the same values, in float32
    assert torch.equal(y, want.to(dtype))


def test_autocast_leaves_the_grid_arithmetic_in_float32(monkeypatch):
    """Under autocast, with a bfloat16 input: the grid points reach the op
    in float32 with autocast off (on CUDA it would compute in bfloat16;
    the grid -1.5 + 0.1 q is not exact in bfloat16)."""
    from adder_mm.models.layers import qat_adder_conv
    seen = []

    def spy(x, w, *args):
        seen.append((torch.is_autocast_enabled('cpu'), x.dtype, w.dtype))
        return adder2d(x, w, *args)

    monkeypatch.setattr(qat_adder_conv, 'adder2d', spy)
    torch.manual_seed(0)
    layer = QATAdderConv2d(8, 6, 3, padding=1, bits=5)
    layer.set_grid(-1.5, 0.1)
    x = randn(2, 8, 6, 6, seed=4).bfloat16()
    want = layer(x.float())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = layer(x)
    assert seen[-1] == (False, torch.float32, torch.float32)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want.bfloat16())


def test_state_dict_a_float_checkpoint_loads_and_the_grid_round_trips():
    torch.manual_seed(0)
    plain = AdderConv2d(4, 6, 3)
    qat = QATAdderConv2d(4, 6, 3, bits=4)
    qat.set_grid(-1., 0.25)
    # A float AdderNet's state: the weights load (strict), the grid is unset
    # (with a warning: the Python API would compute in float silently).
    with pytest.warns(UserWarning, match='compute in float until calibrated'):
        assert qat.load_state_dict(plain.state_dict()) is not None
    assert torch.equal(qat.weight, plain.weight) and not qat.calibrated
    assert torch.isnan(qat.grid_lo) and torch.isnan(qat.grid_scale)
    qat.set_grid(-1., 0.25)
    other = QATAdderConv2d(4, 6, 3, bits=4)
    other.load_state_dict(qat.state_dict())
    assert other.calibrated and other.grid() == (-1., 0.25)
    # Half a grid is a damaged state, reported as such.
    state = qat.state_dict()
    del state['grid_scale']
    with pytest.raises(RuntimeError, match='grid_scale'):
        QATAdderConv2d(4, 6, 3, bits=4).load_state_dict(state)
    # ... and leaves no grid when loaded non-strictly (none stale either).
    calibrated = QATAdderConv2d(4, 6, 3, bits=4)
    calibrated.set_grid(-2., 0.5)
    calibrated.load_state_dict(state, strict=False)
    assert not calibrated.calibrated and calibrated.grid() is None


def test_a_grid_loads_only_with_its_bits_and_on_zero():
    qat = QATAdderConv2d(4, 6, 3, bits=4)
    qat.set_grid(-1., 0.25)
    state = qat.state_dict()
    assert int(state['grid_bits']) == 4
    for strict in (True, False):
        six = QATAdderConv2d(4, 6, 3, bits=6)
        six.set_grid(-2., 0.5)
        weight = six.weight.detach().clone()
        with pytest.raises(RuntimeError, match='made for bits=4, this '
                           'layer has bits=6'):
            six.load_state_dict(state, strict=strict)
        assert six.grid() == (-2., 0.5) and torch.equal(six.weight, weight)
    old = dict(state)
    del old['grid_bits']
    with pytest.raises(RuntimeError, match="no grid_bits .* delete its "
                       "'grid_lo' and 'grid_scale'"):
        QATAdderConv2d(4, 6, 3, bits=4).load_state_dict(old, strict=False)
    del old['grid_lo'], old['grid_scale']  # as it says: a float state
    fresh = QATAdderConv2d(4, 6, 3, bits=4)
    with pytest.warns(UserWarning, match='float adder checkpoint'):
        fresh.load_state_dict(old)
    assert not fresh.calibrated
    bad = dict(state, grid_lo=torch.tensor(0.5))  # 0.0 not on the grid
    with pytest.raises(RuntimeError, match='grid is not valid.*hold 0.0'):
        QATAdderConv2d(4, 6, 3, bits=4).load_state_dict(bad)


class Net(nn.Module):
    def __init__(self, cls, **kw):
        super().__init__()
        self.a = cls(3, 8, 3, padding=1, **kw)
        self.bn = nn.BatchNorm2d(8)
        self.b = cls(8, 12, 3, stride=2, padding=1, bias=True, **kw)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


def batches(n, seed=0):
    return [randn(4, 3, 10, 12, seed=seed + i) for i in range(n)]


def qat_net(bits=4, seed=0):
    torch.manual_seed(seed)
    net = Net(QATAdderConv2d, bits=bits)
    net.b.bias.data.normal_()
    net.bn.running_var.fill_(30.)
    net.bn.running_mean.fill_(-20.)
    return net


@pytest.mark.parametrize('act_percentile', [100, 99.9])
def test_calibration_grids_span_the_float_models_inputs(act_percentile):
    net = qat_net()
    data = batches(3)
    stats, _, _ = calibrate(net, data, 3)  # without grids: the float model
    grids = calibrate_qat(net, data, 3, act_percentile=act_percentile)
    assert set(grids) == {'a', 'b'}
    for name in grids:
        layer = getattr(net, name)
        lo, scale = input_grid(stats[name], 15, act_percentile)
        assert grids[name] == pytest.approx((lo, scale), rel=1e-6)
        assert layer.grid() == grids[name]
        if act_percentile == 100:  # the extremes, within half a step
            # (the grid shifts to put 0.0 on it)
            half = scale / 2 * (1 + 1e-6)
            assert abs(lo - min(stats[name].min, 0.)) <= half
            assert abs(lo + 15 * scale - stats[name].max) <= half
    # Signed input (a): the grid goes below 0; after ReLU (b) it starts there.
    assert grids['a'][0] < 0 and grids['b'][0] == 0
    # Calibrated layers keep their grids unless asked.
    net.a.set_grid(-9., 1.5)
    assert set(calibrate_qat(net, data, 3)) == set()
    assert net.a.grid() == (-9., 1.5)
    assert set(calibrate_qat(net, data, 3, recalibrate=True)) == {'a', 'b'}
    assert net.a.grid() != (-9., 1.5)
    with pytest.raises(CalibrationError, match='no QATAdderConv2d layers'):
        calibrate_qat(Net(AdderConv2d), data, 3)
    with pytest.raises(CalibrationError, match='yielded no batch'):
        calibrate_qat(qat_net(), [], 3)
    with pytest.raises(CalibrationError, match='act_percentile must be'):
        calibrate_qat(qat_net(), data, 3, act_percentile=40)
    for n in (0, True, 2.0):
        with pytest.raises(CalibrationError,
                           match='^calibrate_qat: the number of calibration'):
            calibrate_qat(qat_net(), data, n)


def test_calibration_of_inputs_at_most_zero_puts_zero_on_top():
    """Adder outputs (-L1 <= 0) straight into a QAT layer: lo = -15
    scale in float64 rounds to float32 either side of 0.0's grid point."""
    torch.manual_seed(0)
    for seed in range(12):
        net = nn.Sequential(QATAdderConv2d(3, 4, 3, bits=4),
                            QATAdderConv2d(4, 4, 1, bits=4))
        data = [randn(2, 3, 6, 6, seed=seed, scale=1 + seed / 5)]
        grids = calibrate_qat(net, data, 1, act_percentile=100)
        lo, scale = grids['1']
        assert lo < 0 and abs(lo / scale + 15) < 1e-6


def test_calibration_refuses_inputs_without_a_range_and_restores_grids():
    """An untrained float model (BN running statistics as initialised):
    the adder's outputs are all negative, so layer b sees ReLU zeros only.
    A failed recalibration leaves every grid as it was."""
    net = qat_net()
    net.bn.reset_running_stats()
    net.a.set_grid(-9., 1.5)
    with pytest.raises(CalibrationError, match='^calibrate_qat: the inputs '
                       'of 1 QAT layers span no range, e.g. b: '):
        calibrate_qat(net, batches(2), 2, recalibrate=True)
    assert net.a.grid() == (-9., 1.5) and not net.b.calibrated
    nan = batches(1)[0]
    nan[0, 0, 0, 0] = float('nan')
    with pytest.raises(CalibrationError, match='^calibrate_qat: the input '
                       'of adder layer a holds NaN'):
        calibrate_qat(net, [nan], 1, recalibrate=True)
    assert net.a.grid() == (-9., 1.5)


def test_trained_model_converts_to_integers_that_compute_what_was_trained():
    net = qat_net()
    data = batches(6)
    calibrate_qat(net, data, 3)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for x in data:
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(net.a.weight.grad).all()
        assert net.a.weight.grad.abs().sum() > 0
        opt.step()
    net.eval()
    x = randn(3, 3, 10, 12, seed=99)
    trained = net(x).detach()
    spec = quantize_model(net, data, 2)  # bits from the layers
    assert spec['bits'] == 4 and spec['qat_layers'] == 2
    assert isinstance(net.a, QuantAdderConv2d) and net.a.num_groups == 1
    y = net(x).detach()
    # The integer model is the trained one up to float32 rounding (and a
    # bias correction of that rounding's mean).
    assert (y - trained).abs().max() <= 1e-4 * trained.abs().max()


@pytest.mark.parametrize('kwargs, message', [
    (dict(bits=8), 'trained for 4-bit integers'),
    (dict(method='grouped'), "on its trained grid \\(method 'shared'\\)"),
])
def test_conversion_refuses_another_grid_and_changes_nothing(kwargs,
                                                             message):
    net = qat_net()
    calibrate_qat(net, batches(2), 2)
    with pytest.raises(CalibrationError, match=message):
        quantize_model(net, batches(2), 2, **kwargs)
    assert isinstance(net.a, QATAdderConv2d) and net.a.calibrated


def test_uncalibrated_qat_layers_take_post_training_quantization():
    """A float checkpoint in a QAT model: no grids, so quantize_model
    calibrates them as float adder layers (with a warning), at the bits it
    is given, or by default those the layers were built for."""
    net = qat_net()
    with pytest.warns(UserWarning, match='2 QAT layers have no grid'):
        spec = quantize_model(net, batches(2), 2, bits=6)
    assert spec['bits'] == 6 and spec['qat_layers'] == 0
    assert isinstance(net.b, QuantAdderConv2d) and net.b.bits == 6
    net = qat_net(bits=3)
    with pytest.warns(UserWarning, match='no grid'):
        assert quantize_model(net, batches(2), 2)['bits'] == 3
    # Mixed widths (e.g. an 8-bit first layer): post-training at given bits.
    net = qat_net()
    net.a = QATAdderConv2d(3, 8, 3, padding=1, bits=8)
    with pytest.raises(CalibrationError, match='different bit widths '
                       r'\[4, 8\].*pass bits'):
        quantize_model(net, batches(2), 2)
    with pytest.warns(UserWarning, match='no grid'):
        assert quantize_model(net, batches(2), 2, bits=6)['bits'] == 6


def _grid_worker(rank, port, out_path, fail):
    from adder_mm.engine.hooks.qat_calibration_hook import calibrate_on_rank0
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                            rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    ran = []
    layers = [QATAdderConv2d(2, 2, 1, bits=4) for _ in range(2)]
    if rank == 1:  # a stale grid of its own, which rank 0's replaces
        layers[1].set_grid(0., 3.)

    def calibrate():
        ran.append(rank)
        if fail:
            raise CalibrationError('calibrate_qat: no range')
        layers[0].set_grid(-1., 0.5)  # layer 1 stays without a grid

    try:
        calibrate_on_rank0(layers, calibrate)
        result = [(m.calibrated, m.grid_lo.clone(), m.grid_scale.clone())
                  for m in layers]
    except Exception as e:
        result = f'{type(e).__name__}: {e}'
    finally:
        dist.destroy_process_group()
    torch.save((ran, result), f'{out_path}.{rank}')


@pytest.mark.parametrize('fail', [False, True])
def test_rank_0_calibrates_and_every_process_takes_its_grids(tmp_path,
                                                              fail):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    out = tmp_path / 'rank'
    ctx = mp.start_processes(_grid_worker, args=(port, str(out), fail),
                             nprocs=2, join=False, start_method='spawn')
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail('workers did not finish in 120 s')
    (ran0, res0), (ran1, res1) = (torch.load(f'{out}.{r}') for r in (0, 1))
    assert ran0 == [0] and ran1 == []  # rank 0 alone calibrates
    if fail:  # everyone raises: rank 0 its error, rank 1 says where
        assert res0 == 'CalibrationError: calibrate_qat: no range'
        assert res1.startswith('RuntimeError: QATCalibrationHook: '
                               'calibrating the QAT grids failed in rank 0')
        return
    for result in (res0, res1):
        (cal0, lo0, scale0), (cal1, lo1, scale1) = result
        assert cal0 and float(lo0) == -1. and float(scale0) == 0.5
        assert not cal1 and torch.isnan(lo1) and torch.isnan(scale1)


def test_load_from_a_float_checkpoint_is_no_difference(tmp_path):
    """tools/train.py's load_from check: a float AdderNet's checkpoint in a
    QAT model lists no missing grid keys (they are calibrated); testing or
    resuming (strict) still refuses it; half a grid is still listed."""
    from adder_mm.apis import ToolError, check_checkpoint
    torch.manual_seed(0)
    path = tmp_path / 'float.pth'
    torch.save({'state_dict': Net(AdderConv2d).state_dict()}, path)
    model = qat_net()
    _, diff = check_checkpoint(str(path), model, strict=False)
    assert diff == ''
    with pytest.raises(ToolError, match='missing in the checkpoint .*'
                       'a.grid_lo'):
        check_checkpoint(str(path), model, strict=True)
    state = Net(AdderConv2d).state_dict()
    state['b.grid_lo'] = torch.tensor(0.)
    torch.save({'state_dict': state}, path)
    _, diff = check_checkpoint(str(path), model, strict=False)
    assert 'b.grid_scale' in diff and 'a.grid' not in diff


def test_checkpoint_check_names_float_and_qat_mixups(tmp_path):
    """Testing a float checkpoint with the QAT config, a QAT checkpoint
    with the float config, or a QAT checkpoint with other bits: the check
    says which it is and what to do."""
    from adder_mm.apis import ToolError, check_checkpoint
    path = str(tmp_path / 'c.pth')
    torch.save({'state_dict': Net(AdderConv2d).state_dict()}, path)
    with pytest.raises(ToolError, match="float AdderNet's checkpoint.*"
                       'fine-tune it with tools/train.py'):
        check_checkpoint(path, qat_net(), strict=True)
    trained = qat_net()
    calibrate_qat(trained, batches(2), 2)
    torch.save({'state_dict': trained.state_dict()}, path)
    with pytest.raises(ToolError, match=r'quantization-aware \(QAT\) '
                       'checkpoint: use its QAT config'):
        check_checkpoint(path, Net(AdderConv2d), strict=True)
    for strict in (True, False):
        with pytest.raises(ToolError, match="grids made for 4-bit integers, "
                           "but the model's QAT layers have bits=6 "
                           '\\(e.g. a\\)'):
            check_checkpoint(path, qat_net(bits=6), strict=strict)
    assert check_checkpoint(path, qat_net(), strict=True)[1] == ''
