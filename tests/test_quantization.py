"""Post-training quantization: QuantAdderConv2d against float64 formulas,
the planner's exactness where the values lie on the grids, accuracy at 8
bits, bad input, checkpoints, and tools/quantize.py + tools/test.py on a
trained digits model (about a minute on 2 CPU cores)."""
import os
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn

import adder_mm  # noqa: F401
from adder_mm.models import AdderConv2d
from adder_mm.models.layers import QuantAdderConv2d
from adder_mm.ops import adder2d_reference
from adder_mm.quantization import (
    CalibrationError,
    convert_structure,
    quantize_model,
)
from adder_mm.quantization.runner import save_quantized

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def sad(qx, qw, pad, stride, padding, groups):
    """sum |qx_pad - qw| in float64, independently of adder2d_int8: the
    float reference on bytes shifted by the padding value (so that its
    zero padding is the byte ``pad``)."""
    return -adder2d_reference(qx.double() - pad, qw.double() - pad, None,
                              stride, padding, 1, groups)


def expected_output(q, x):
    """QuantAdderConv2d's formula, recomputed in float64 from its buffers."""
    x = x.double().clamp(float(q.act_lo), float(q.act_hi))
    qmax, ys, start = q.qmax, [], 0
    for g, size in enumerate(q.group_sizes.tolist()):
        lo, s = float(q.lo[g]), float(q.scale[g])
        hi = lo + s * qmax
        xq = torch.round((x.clamp(lo, hi) - lo) / s).clamp(0, qmax)
        pad = float(torch.round(torch.tensor((min(max(0., lo), hi) - lo) /
                                             s)).clamp(0, qmax))
        rows = slice(start, start + size)
        start += size
        y = q.out_bias[rows].double().view(1, -1, 1, 1) - s * sad(
            xq, q.qweight[rows], pad, q.stride, q.padding, q.groups)
        rem = float(q.rem_scale)
        if rem > 0:
            u = (x - hi).clamp(min=0) + (lo - x).clamp(min=0)
            uq = torch.round(u / rem).clamp(0, qmax)
            upad = round((max(-hi, 0.) + max(lo, 0.)) / rem)
            ones = torch.zeros(q.groups, q.in_channels // q.groups,
                               *q.kernel_size, dtype=torch.float64)
            r = sad(uq, ones, upad, q.stride, q.padding, q.groups)
            per = q.out_channels // q.groups
            y = y - rem * r[:, (q.perm[rows] // per)]
        ys.append(y)
    y = torch.cat(ys, 1)
    return y[:, torch.argsort(q.perm)]


class Net(nn.Module):
    """Adder layers fed by ReLU (non-negative) and by a signed input."""

    def __init__(self, groups=1):
        super().__init__()
        self.a = AdderConv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = AdderConv2d(8, 12, 3, stride=2, padding=1, groups=groups,
                             bias=True)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


def batches(n, seed=0, shape=(4, 3, 10, 12)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def make_net(groups=1, seed=0):
    torch.manual_seed(seed)
    net = Net(groups)
    net.b.bias.data.normal_()
    # Trained-looking BN statistics for the calibration forward in eval.
    net.bn.running_var.fill_(30.)
    net.bn.running_mean.fill_(-20.)
    return net.eval()


@pytest.mark.parametrize('method, bits, groups', [
    ('shared', 8, 1), ('grouped', 8, 1), ('grouped', 4, 3),
    ('grouped', 6, 12), ('shared', 4, 2)])
def test_layer_matches_float64_formula(method, bits, groups):
    net = make_net(groups=2 if groups == 2 else 1)
    quantize_model(net, batches(3), num_batches=3, bits=bits, method=method,
                   num_groups=groups)
    assert isinstance(net.a, QuantAdderConv2d)
    assert isinstance(net.b, QuantAdderConv2d)
    x = batches(1, seed=5)[0] * 1.5  # also values outside the calibration
    h = torch.relu(net.bn(net.a(x)))
    for q, inp in ((net.a, x), (net.b, h)):
        y = q(inp)
        ref = expected_output(q, inp)
        assert y.dtype == torch.float32 and y.shape == ref.shape
        # float32 rounding of values up to ~1e3, nothing more.
        err = (y.double() - ref).abs().max().item()
        assert err <= 2e-6 * ref.abs().max().item() + 1e-4, err


def test_grouped_is_exact_on_grid_values():
    """Integer inputs 0..31 and integer weights: with 5 bits every grid
    step is 1, so the clamps, the per-channel constants, the groups and the
    remainder sums must reproduce the float adder exactly. Half the
    channels span the whole range, the others are constant filters whose
    output is all remainder."""
    g = torch.Generator().manual_seed(1)
    layer = AdderConv2d(4, 8, 3, padding=1, bias=True)
    w = torch.randint(-6, 40, (8, 4, 3, 3), generator=g).float()
    w[:4, 0, 0, 0], w[:4, 0, 0, 1] = -5., 36.  # clamped to 0 and 31
    w[4:] = torch.tensor([3., 9., 17., 26.]).view(4, 1, 1, 1)
    layer.weight.data.copy_(w)
    layer.bias.data.copy_(torch.arange(8.) - 3)
    net = nn.Sequential(layer).eval()
    x = torch.randint(0, 32, (2, 4, 7, 6), generator=g).float()
    x[0, 0, 0, 0] = 31.  # the calibrated maximum
    ref = net(x)
    quantize_model(net, [x], num_batches=1, bits=5, method='grouped',
                   num_groups=8, act_percentile=100.)
    q = net[0]
    assert float(q.rem_scale) == 1. and float(q.act_hi) == 31.
    assert q.num_groups == 5  # 4 constant filters + 1 spanning cluster
    torch.testing.assert_close(net(x), ref, rtol=0, atol=1e-3)


def test_shared_is_exact_on_grid_values():
    layer = AdderConv2d(2, 3, 3, padding=1)
    g = torch.Generator().manual_seed(2)
    layer.weight.data.copy_(torch.randint(-55, 201, (3, 2, 3, 3),
                                          generator=g).float())
    layer.weight.data[0, 0, 0, 0] = -55.
    x = torch.randint(0, 201, (1, 2, 5, 5), generator=g).float()
    x[0, 0, 0, 0] = 200.
    net = nn.Sequential(layer).eval()
    ref = net(x)
    quantize_model(net, [x], num_batches=1, bits=8, method='shared')
    assert float(net[0].scale[0]) == 1.  # 255 steps over [-55, 200]
    torch.testing.assert_close(net(x), ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize('method', ['shared', 'grouped'])
def test_eight_bits_close_to_float(method):
    net = make_net()
    x = batches(1, seed=7)[0]
    ref = net(x)
    quantize_model(net, batches(4), num_batches=4, bits=8, method=method)
    y = net(x)
    # Errors of about a grid step per term at most, in sum much smaller
    # than one tap of |x - w| (a dropped tap would exceed this).
    rel = ((y - ref).abs().mean() / ref.abs().mean()).item()
    assert rel < 0.01, rel


def test_grouped_beats_shared_at_four_bits():
    errs = {}
    for method in ('shared', 'grouped'):
        net = make_net()
        x = batches(1, seed=7)[0]
        ref = net(x)
        quantize_model(net, batches(4), num_batches=4, bits=4,
                       method=method)
        errs[method] = ((net(x) - ref) ** 2).mean().item()
    assert errs['grouped'] < 0.5 * errs['shared'], errs


def test_bad_input_changes_nothing():
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for kwargs, message in [
            (dict(bits=9), 'bits must be an int in 2..8'),
            (dict(bits=1), 'bits must be an int in 2..8'),
            (dict(method='minmax'), 'method must be one of'),
            (dict(num_groups=0), 'num_groups'),
            (dict(act_percentile=30.), 'act_percentile'),
            (dict(num_batches=0), 'calibration batches')]:
        with pytest.raises(CalibrationError, match=message):
            quantize_model(net, batches(2), **kwargs)
    with pytest.raises(CalibrationError, match='yielded no batch'):
        quantize_model(net, [], num_batches=2)
    assert all(isinstance(m, AdderConv2d) for m in (net.a, net.b))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(CalibrationError, match='no adder layers'):
        quantize_model(nn.Sequential(nn.Conv2d(3, 3, 1)), batches(1))
    quantize_model(net, batches(1), num_batches=1)
    with pytest.raises(CalibrationError, match='quantized already'):
        quantize_model(net, batches(1), num_batches=1)


def test_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match='bits must be an int in 2..8'):
        QuantAdderConv2d(3, 4, 3, bits=9)
    with pytest.raises(ValueError, match='num_groups'):
        QuantAdderConv2d(3, 4, 3, num_groups=5)
    for kwargs in (dict(bits=8.0), dict(num_groups=2.0), dict(bits=True)):
        with pytest.raises(ValueError, match='must be an int'):
            QuantAdderConv2d(3, 4, 3, **kwargs)
    q = QuantAdderConv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r'expected input \[N, 3'):
        q(torch.zeros(1, 2, 5, 5))
    with pytest.raises(TypeError, match='floating point'):
        q(torch.zeros(1, 3, 5, 5, dtype=torch.uint8))


def test_unbatched_input_as_the_float_layer():
    net = make_net()
    quantize_model(net, batches(1), num_batches=1)
    x = batches(1, seed=1)[0]
    assert isinstance(net.a, QuantAdderConv2d)
    assert torch.equal(net.a(x[1]), net.a(x[1:2])[0])


def test_grouped_keeps_conv_groups_whole():
    """Clusters across conv groups summed channels against the wrong input
    group (errors of 1.6 where 8 bits give 0.04) or, depthwise, failed;
    a layer with conv groups keeps one cluster."""
    torch.manual_seed(0)
    layer = AdderConv2d(4, 4, 3, padding=1, groups=2)
    w = torch.rand(4, 2, 3, 3)
    w[:2] *= 0.5
    w[2:] = w[2:] * 0.5 + 1.5
    layer.weight.data.copy_(w)
    net = nn.Sequential(layer).eval()
    x = torch.rand(2, 4, 6, 6) * 2
    x[:, :2] *= 0.01
    ref = net(x)
    quantize_model(net, [x], num_batches=1, method='grouped', num_groups=2,
                   act_percentile=100., bias_correction=False)
    assert net[0].num_groups == 1
    assert (net(x) - ref).abs().max() < 0.1
    depthwise = nn.Sequential(AdderConv2d(8, 8, 3, padding=1, groups=8))
    x = torch.randn(2, 8, 6, 6)
    ref = depthwise.eval()(x)
    quantize_model(depthwise, [x], num_batches=1, method='grouped')
    assert (depthwise(x) - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize('where', ['input nan', 'input inf', 'weight nan'])
def test_non_finite_values_are_refused(where):
    """A NaN in the calibration data was dropped by min/max and left a NaN
    bias (every output NaN) or a wrong range; an inf failed in the grid."""
    net = make_net()
    x = batches(1)[0]
    if where == 'input nan':
        x[0, 0, 0, 0] = float('nan')
    elif where == 'input inf':
        x[1, 2, 3, 4] = float('inf')
    else:
        net.b.weight.data[0, 0, 0, 0] = float('nan')
    before = {k: v.clone() for k, v in net.state_dict().items()}
    layer = 'b' if where == 'weight nan' else 'a'
    with pytest.raises(CalibrationError, match=f'adder layer {layer} .*NaN'):
        quantize_model(net, [x], num_batches=1)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k].nan_to_num(), after[k].nan_to_num())
               for k in before)
    assert isinstance(net.a, AdderConv2d) and isinstance(net.b, AdderConv2d)


def test_calibration_batches_of_plain_loaders():
    """A TensorDataset's [x] and (images, labels) batches feed their first
    item; anything else is named, with the way out (forward=)."""
    from torch.utils.data import DataLoader, TensorDataset
    data = TensorDataset(torch.randn(8, 3, 10, 12), torch.zeros(8))
    for loader in (DataLoader(TensorDataset(data.tensors[0]), batch_size=4),
                   DataLoader(data, batch_size=4)):
        net = make_net()
        quantize_model(net, loader, num_batches=2)
        assert isinstance(net.a, QuantAdderConv2d)
    net = make_net()
    with pytest.raises(CalibrationError, match='batch is a ndarray.*forward='):
        quantize_model(net, [batches(1)[0].numpy()], num_batches=1)
    assert isinstance(net.a, AdderConv2d)


def test_other_dtypes_run_after_quantization():
    """A float64 model ran its float layers in float64 on the quantized
    layers' float32 outputs (BatchNorm refused); .half() of a quantized
    model cast the integer kernel's float32 arguments."""
    net = make_net().double()
    x = batches(1)[0].double()
    ref = net(x)
    quantize_model(net, [x], num_batches=1)
    y = net(x)
    assert y.dtype == torch.float64
    assert (y - ref).abs().max() < 0.02 * ref.abs().max()
    buffers = {k: v.clone() for k, v in net.a.named_buffers()}
    net.bfloat16()
    assert net.a.scale.dtype == torch.float32
    assert net.a.qweight.dtype == torch.uint8
    for name, value in net.a.named_buffers():  # exact, not bfloat16's
        assert torch.equal(value, buffers[name].to(value.dtype)), name
    assert net(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize('spec', [
    'int8', dict(bits=8, layers=['a']), dict(bits=8, layers={'a': 'x'}),
    dict(bits=8, layers={'a': 0}), dict(bits=9, layers={'a': 1})])
def test_damaged_spec_is_named(spec):
    """A quantized checkpoint's spec edited or damaged: a CalibrationError
    (which the tools print as an error line), and the model unchanged."""
    net = make_net()
    with pytest.raises(CalibrationError,
                       match='damaged|num_groups|bits must be'):
        convert_structure(net, spec)
    assert isinstance(net.a, AdderConv2d)


def test_checkpoint_round_trip_and_atomic_save(tmp_path):
    net = make_net()
    spec = quantize_model(net, batches(2), num_batches=2, bits=6,
                          method='grouped', num_groups=3)
    path = tmp_path / 'q.pth'
    save_quantized(net, spec, str(path))
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    fresh = convert_structure(make_net(seed=3), ckpt['meta']['quantization'])
    fresh.load_state_dict(ckpt['state_dict'], strict=True)
    x = batches(1, seed=9)[0]
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)
    with pytest.raises(CalibrationError, match='does not have'):
        convert_structure(nn.Sequential(nn.Conv2d(3, 8, 3)),
                          ckpt['meta']['quantization'])
    # A failed save leaves neither the file nor a temporary behind.
    bad = tmp_path / 'sub'
    bad.mkdir()
    with pytest.raises(OSError):
        save_quantized(net, spec, str(bad))  # a folder is in the way
    assert sorted(os.listdir(tmp_path)) == ['q.pth', 'sub']


def test_quantized_checkpoint_in_a_float_model(tmp_path):
    """MMPretrain's init_model(config, quantized.pth) loads non-strictly:
    the float model kept its random weights (10% top-1 on the digits) with
    a printed warning. The float layer now refuses a quantized layer's
    state, and load_quantized_checkpoint converts the model first."""
    from mmengine.runner import load_checkpoint

    from adder_mm.quantization import load_quantized_checkpoint
    net = make_net()
    spec = quantize_model(net, batches(2), num_batches=2, bits=8)
    path = tmp_path / 'q.pth'
    save_quantized(net, spec, str(path))
    for load in (lambda m: load_checkpoint(m, str(path), strict=False),
                 lambda m: m.load_state_dict(
                     torch.load(path, weights_only=True)['state_dict'],
                     strict=False)):
        with pytest.raises(RuntimeError, match=r'^a: the state dict holds a '
                           r'quantized adder layer .*load_quantized_'
                           r'checkpoint\(model, path\)'):
            load(make_net(seed=3))
    fresh = make_net(seed=3)
    ckpt = load_quantized_checkpoint(fresh, str(path))
    assert ckpt['meta']['quantization'] == spec
    x = batches(1, seed=9)[0]
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)
    # a float checkpoint loads as it is
    torch.save({'state_dict': make_net(seed=5).state_dict()},
               tmp_path / 'f.pth')
    fresh = make_net(seed=3)
    assert load_quantized_checkpoint(fresh, str(tmp_path / 'f.pth'))
    torch.testing.assert_close(fresh(x), make_net(seed=5)(x), rtol=0, atol=0)


# --- the tools on a trained digits model ---------------------------------

ADDER_CFG = osp.join(REPO, 'configs', 'adder_r20_digits.py')
CNN_CFG = osp.join(REPO, 'configs', 'cnn_r20_digits.py')


@pytest.fixture(scope='module')
def tool(run_tool):
    return run_tool


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tool):
    work = tmp_path_factory.mktemp('digits')
    proc = tool([osp.join('tools', 'train.py'), ADDER_CFG, '--work-dir',
                 str(work), '--cfg-options', 'train_cfg.max_epochs=2'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(work / 'epoch_2.pth'), work


QUANT = re.compile(r'top-1 (?:float|QAT) ([\d.]+), quantized ([\d.]+)')


@pytest.mark.slow
@pytest.mark.parametrize('method, bits', [('shared', 8), ('grouped', 4)])
def test_quantize_tool_and_test_tool_agree(method, bits, trained, tmp_path,
                                           tool):
    ckpt, _ = trained
    out = tmp_path / 'q.pth'
    proc = tool([osp.join('tools', 'quantize.py'), ADDER_CFG, ckpt,
                 '--bits', str(bits), '--method', method, '--calib-batches',
                 '4', '--out', str(out), '--work-dir', str(tmp_path / 'w')])
    assert proc.returncode == 0, proc.stderr[-3000:]
    fl, qu = map(float, QUANT.search(proc.stdout + proc.stderr).groups())
    assert qu > 30.0  # far above chance (10%) after 2 epochs
    if bits == 8:
        assert abs(qu - fl) <= 3.0
    proc = tool([osp.join('tools', 'test.py'), ADDER_CFG, str(out),
                 '--work-dir', str(tmp_path / 't')])
    assert proc.returncode == 0, proc.stderr[-3000:]
    tested = float(re.findall(r'accuracy/top1: ([\d.]+)',
                              proc.stdout + proc.stderr)[-1])
    assert tested == pytest.approx(qu, abs=0.006)  # printed to 2 decimals


@pytest.mark.slow
def test_quantize_tool_refusals(trained, tmp_path, tool):
    ckpt, _ = trained
    q = tmp_path / 'q.pth'
    proc = tool([osp.join('tools', 'quantize.py'), ADDER_CFG, ckpt,
                 '--calib-batches', '1', '--out', str(q), '--work-dir',
                 str(tmp_path / 'w')])
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = [
        ([ADDER_CFG, str(q)], 'is a quantized checkpoint'),
        ([CNN_CFG, ckpt], 'saved from an AdderNet (20 adder layers)'),
        ([ADDER_CFG, ckpt, '--bits', '9'], 'invalid choice'),
        ([ADDER_CFG, ckpt, '--method', 'torch-ao'], 'has adder layers'),
        # checked before any work (it failed after the three evaluations)
        ([ADDER_CFG, ckpt, '--out', str(tmp_path)], 'is a folder'),
        ([ADDER_CFG, ckpt, '--out', str(q / 'q.pth')], 'is a file'),
    ]
    for args, message in cases:
        proc = tool([osp.join('tools', 'quantize.py')] + args +
                    ['--work-dir', str(tmp_path / 'w2')] +
                    ['--out', str(tmp_path / 'never.pth')] *
                    (args[-1] != 'torch-ao' and '--out' not in args))
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert message in proc.stderr, (args, proc.stderr[-2000:])
        assert 'Traceback' not in proc.stderr
        assert not (tmp_path / 'never.pth').exists()
    # A float checkpoint where a quantized one is required.
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    from adder_mm.apis import ToolError, check_checkpoint
    model = MODELS.build(Config.fromfile(ADDER_CFG).model)
    with pytest.raises(ToolError, match='is a float checkpoint'):
        check_checkpoint(ckpt, model, quantized='require')


@pytest.mark.slow
def test_torch_ao_baseline_on_the_cnn_twin(trained, tmp_path, tool):
    """PyTorch's INT8 PTQ of the CNN twin's backbone runs from the tool
    (the adder checkpoint's weights fit the twin: same keys and shapes;
    without the meta that names its kind, the tools accept it)."""
    ckpt, _ = trained
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    state['meta'].pop('adder_layers')
    ckpt = str(tmp_path / 'no_kind.pth')
    torch.save(state, ckpt)
    proc = tool([osp.join('tools', 'quantize.py'), CNN_CFG, ckpt,
                 '--method', 'torch-ao', '--calib-batches', '2',
                 '--work-dir', str(tmp_path / 'w')])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'torch-ao, 8-bit' in proc.stdout + proc.stderr


QAT_CFG = osp.join(REPO, 'configs', 'adder_r20_digits_int4_qat.py')


@pytest.mark.slow
def test_qat_from_a_float_checkpoint_to_integers(trained, tmp_path, tool):
    """The QAT config fine-tunes the float model; tools/train.py adds the
    calibration hook where the config lacks it; --resume keeps the grids;
    quantize.py converts on them (the integer model scores what the QAT
    model scored) and test.py evaluates the result."""
    ckpt, _ = trained
    config = tmp_path / 'qat_no_hook.py'
    config.write_text(f'_base_ = {QAT_CFG!r}\n'
                      "custom_hooks = [dict(type='ExactResumeHook')]\n")
    work = tmp_path / 'qat'
    base = [osp.join('tools', 'train.py'), str(config), '--work-dir',
            str(work), '--cfg-options', f'load_from={ckpt}']
    proc = tool(base + ['train_cfg.max_epochs=1'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'QATCalibrationHook (the model has QAT layers)' in log
    assert 'QATCalibrationHook: 20 QAT layer grids set from 8 batches' in log
    proc = tool(base + ['train_cfg.max_epochs=2', '--resume'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'every QAT layer has its grid from the checkpoint' in \
        proc.stdout + proc.stderr
    qat = str(work / 'epoch_2.pth')
    out = tmp_path / 'q4.pth'
    proc = tool([osp.join('tools', 'quantize.py'), QAT_CFG, qat, '--out',
                 str(out), '--calib-batches', '2', '--work-dir',
                 str(tmp_path / 'w')])
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'shared, 20 layers on their QAT grids, 4-bit' in log
    assert 'top-1 QAT ' in log
    fl, qu = map(float, QUANT.search(log).groups())
    assert qu > 30.0
    assert abs(qu - fl) <= 0.6  # at most 2 of the 359 images change
    proc = tool([osp.join('tools', 'test.py'), QAT_CFG, str(out),
                 '--work-dir', str(tmp_path / 't')])
    assert proc.returncode == 0, proc.stderr[-3000:]
    tested = float(re.findall(r'accuracy/top1: ([\d.]+)',
                              proc.stdout + proc.stderr)[-1])
    assert tested == pytest.approx(qu, abs=0.006)
    # The QAT checkpoint itself tests at what quantize.py measured for it.
    proc = tool([osp.join('tools', 'test.py'), QAT_CFG, qat, '--work-dir',
                 str(tmp_path / 't')])
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'quantization-aware checkpoint: 20 adder layers run on its ' \
        '4-bit grids' in log
    assert float(re.findall(r'accuracy/top1: ([\d.]+)', log)[-1]) == \
        pytest.approx(fl, abs=0.006)
    # Flags the trained grids refuse stop before any evaluation.
    proc = tool([osp.join('tools', 'quantize.py'), QAT_CFG, qat, '--bits',
                 '8', '--work-dir', str(tmp_path / 'w')])
    assert proc.returncode == 2 and 'trained for 4-bit integers' in \
        proc.stderr, proc.stderr[-2000:]
    assert 'accuracy/top1' not in proc.stdout + proc.stderr
    # The float checkpoint with the QAT config: test.py says what it is.
    proc = tool([osp.join('tools', 'test.py'), QAT_CFG, ckpt, '--work-dir',
                 str(tmp_path / 't')])
    assert proc.returncode == 2 and "a float AdderNet's checkpoint" in \
        proc.stderr, proc.stderr[-2000:]
    # QAT without a trained float model: calibration refuses, as an error
    # line (no traceback).
    proc = tool([osp.join('tools', 'train.py'), QAT_CFG, '--work-dir',
                 str(tmp_path / 'scratch'), '--cfg-options', 'load_from=None'])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'train.py: error: calibrate_qat: the inputs of' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_op_counter_prices_quantized_ops_at_their_precision():
    from adder_mm.analysis.op_counter import count_ops, load_energy_table
    net = make_net()
    x = batches(1)[0][:1]
    float_ops = count_ops(net, x)
    quantize_model(net, batches(2), num_batches=2, bits=6, method='grouped',
                   num_groups=3)
    ops = count_ops(net, x)
    kinds = [layer.kind for layer in ops.layers]
    assert kinds == ['qadder', 'qadder']
    a = ops.layers[0]
    terms = a.outputs * a.terms  # K per output element
    assert a.fixed['add@int8'] == terms
    assert a.fixed['add@int32'] >= terms
    assert a.fixed['mult@fp32'] >= a.outputs  # dequantization
    table = load_energy_table()
    fixed = ops.totals()['fixed']
    expected = sum(n * table[key.split('@')[1]][key.split('@')[0]]
                   for key, n in fixed.items())
    # Every op of these layers carries its precision: the float row asked
    # for does not change the energy.
    for bits in ('fp32', 'fp16'):
        assert ops.energy_pj(bits, table) == pytest.approx(expected)
    assert expected < 0.5 * float_ops.energy_pj('fp32', table)


def test_bias_correction_cancels_the_mean_error():
    """With weights far outside their inputs' range, rounding a weight
    shifts every output of its channel by the same amount: bias correction
    (on by default) folds the mean error of each channel, measured on
    calibration data, into the bias."""
    calib = [torch.rand(4, 3, 9, 9) * 2 for _ in range(2)]
    errs = {}
    for bc in (False, True):
        torch.manual_seed(0)
        net = nn.Sequential(AdderConv2d(3, 6, 3, padding=1)).eval()
        net[0].weight.data.mul_(40)  # |w| >> x: mostly linear terms
        ref = [net(x) for x in calib]
        spec = quantize_model(net, calib, num_batches=2, bits=6,
                              method='shared', bias_correction=bc)
        assert spec['bias_correction'] is bc
        errs[bc] = torch.stack([(net(x) - y).mean(dim=(0, 2, 3))
                                for x, y in zip(calib, ref)]).mean(0)
    assert errs[True].abs().max() < 1e-3 * errs[False].abs().max() + 1e-4
    assert errs[False].abs().max() > 0.05


def test_quant_sweep_checks_its_outputs_and_inputs_first(tmp_path, tool):
    """A broken --markdown file or a seed without a checkpoint used to stop
    the sweep after the quantize runs before it; now before any."""
    sweep = osp.join('tools', 'analysis_tools', 'quant_sweep.py')
    broken = tmp_path / 'broken.md'
    broken.write_text('<!-- quant-accuracy:begin -->\nno end marker\n')
    proc = tool([sweep, ADDER_CFG, '--seeds-dir', str(tmp_path / 'none'),
                 '--markdown', str(broken)])
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'one marker without the other' in proc.stderr, proc.stderr
    proc = tool([sweep, ADDER_CFG, '--seeds-dir', str(tmp_path / 'none'),
                 '--seeds', '0', '--markdown', str(tmp_path / 'ok.md')])
    assert proc.returncode == 1 and 'no trained checkpoint' in proc.stderr
    assert not (tmp_path / 'ok.md').exists()
    proc = tool([sweep, ADDER_CFG, '--seeds-dir', str(tmp_path / 'none'),
                 '--qat', str(tmp_path / 'missing_qat.py')])
    assert proc.returncode == 1 and 'missing_qat.py: no such file' in \
        proc.stderr, proc.stderr
