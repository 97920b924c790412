"""official2mmpretrain.py: official key layout -> our models, same logits.

The official forward is re-implemented here from PAPER.md's description
(functional ops on the official state_dict, adder layers through
adder2d_reference), independent of mmpretrain and of the converter.
"""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.runner import load_checkpoint
from mmpretrain.registry import MODELS

import adder_mm  # noqa: F401
from adder_mm.apis import official_weights as conv_tool
from adder_mm.ops import adder2d_reference

ROOT = osp.dirname(osp.dirname(__file__))
TOOL = osp.join('tools', 'model_converters', 'official2mmpretrain.py')

# arch -> (stage blocks, bottleneck?, classes, fc bias, our config)
ARCHS = {
    'resnet20': ((3, 3, 3), False, 10, False, 'adder_r20_cifar10.py'),
    'resnet32': ((5, 5, 5), False, 10, False, 'adder_r32_cifar10.py'),
    'resnet50': ((3, 4, 6, 3), True, 1000, True, 'adder_r50_imagenet.py'),
}


def _blocks(arch):
    """(prefix, in, mid, out, stride, has_downsample) per official block."""
    stages, bottleneck, *_ = ARCHS[arch]
    widths = (64, 128, 256, 512) if bottleneck else (16, 32, 64)
    cin = 64 if bottleneck else 16
    for i, (n, w) in enumerate(zip(stages, widths)):
        cout = w * 4 if bottleneck else w
        for j in range(n):
            stride = 2 if j == 0 and i > 0 else 1
            yield (f'layer{i + 1}.{j}', cin, w, cout, stride,
                   stride != 1 or cin != cout)
            cin = cout


def _official_state_dict(arch, gen):
    """Random weights in the official key layout (BN stats filled later)."""
    stages, bottleneck, classes, bias, _ = ARCHS[arch]
    sd = {}

    def bn(name, c):
        sd[f'{name}.weight'] = torch.rand(c, generator=gen) + 0.5
        sd[f'{name}.bias'] = torch.randn(c, generator=gen) * 0.1
        sd[f'{name}.running_mean'] = torch.zeros(c)
        sd[f'{name}.running_var'] = torch.ones(c)
        sd[f'{name}.num_batches_tracked'] = torch.tensor(7)

    def adder(name, cout, cin, k):
        sd[f'{name}.adder'] = torch.randn(cout, cin, k, k, generator=gen)

    stem = 64 if bottleneck else 16
    k = 7 if bottleneck else 3
    sd['conv1.weight'] = torch.randn(stem, 3, k, k, generator=gen) * 0.2
    bn('bn1', stem)
    for prefix, cin, mid, cout, stride, down in _blocks(arch):
        if bottleneck:
            adder(f'{prefix}.conv1', mid, cin, 1)
            bn(f'{prefix}.bn1', mid)
            adder(f'{prefix}.conv2', mid, mid, 3)
            bn(f'{prefix}.bn2', mid)
            adder(f'{prefix}.conv3', cout, mid, 1)
            bn(f'{prefix}.bn3', cout)
        else:
            adder(f'{prefix}.conv1', cout, cin, 3)
            bn(f'{prefix}.bn1', cout)
            adder(f'{prefix}.conv2', cout, cout, 3)
            bn(f'{prefix}.bn2', cout)
        if down:
            adder(f'{prefix}.downsample.0', cout, cin, 1)
            bn(f'{prefix}.downsample.1', cout)
    feat = 2048 if bottleneck else 64
    sd['fc.weight'] = torch.randn(classes, feat, 1, 1, generator=gen) * 0.1
    if bias:
        sd['fc.bias'] = torch.randn(classes, generator=gen)
    bn('bn2', classes)
    return sd


def official_forward(sd, x, arch, calibrate=False):
    """The reference models' eval forward (PAPER.md), on an official sd.

    calibrate=True sets every BN's running stats to the statistics of this
    batch first, so random weights give non-degenerate activations.
    """
    _, bottleneck, *_ = ARCHS[arch]

    def bn(t, name):
        if calibrate:
            dims = [0] + list(range(2, t.dim()))
            sd[f'{name}.running_mean'] = t.mean(dims).detach()
            sd[f'{name}.running_var'] = t.var(dims, unbiased=False).detach()
        return F.batch_norm(t, sd[f'{name}.running_mean'],
                            sd[f'{name}.running_var'], sd[f'{name}.weight'],
                            sd[f'{name}.bias'], False, 0.0, 1e-5)

    def add(t, name, stride, pad):
        return adder2d_reference(
            t, sd[f'{name}.adder'], stride=stride, padding=pad)

    if bottleneck:
        t = F.relu(bn(F.conv2d(x, sd['conv1.weight'], stride=2, padding=3),
                      'bn1'))
        t = F.max_pool2d(t, 3, 2, 1)
    else:
        t = F.relu(bn(F.conv2d(x, sd['conv1.weight'], padding=1), 'bn1'))
    for prefix, _, _, _, stride, down in _blocks(arch):
        if bottleneck:
            o = F.relu(bn(add(t, f'{prefix}.conv1', 1, 0), f'{prefix}.bn1'))
            o = F.relu(bn(add(o, f'{prefix}.conv2', stride, 1),
                          f'{prefix}.bn2'))
            o = bn(add(o, f'{prefix}.conv3', 1, 0), f'{prefix}.bn3')
        else:
            o = F.relu(bn(add(t, f'{prefix}.conv1', stride, 1),
                          f'{prefix}.bn1'))
            o = bn(add(o, f'{prefix}.conv2', 1, 1), f'{prefix}.bn2')
        sc = t
        if down:
            sc = bn(add(t, f'{prefix}.downsample.0', stride, 0),
                    f'{prefix}.downsample.1')
        t = F.relu(o + sc)
    t = F.avg_pool2d(t, t.shape[-1])  # AvgPool over the whole last map
    t = F.conv2d(t, sd['fc.weight'], sd.get('fc.bias'))
    return bn(t, 'bn2').flatten(1)


def _config_model(arch):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', ARCHS[arch][4]))
    return MODELS.build(cfg.model).eval()


@pytest.mark.parametrize('arch,prefix', [('resnet20', ''),
                                         ('resnet32', 'module.'),
                                         ('resnet50', 'module.')])
def test_converted_weights_give_official_logits(arch, prefix, tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = _official_state_dict(arch, gen)
    size = 32
    with torch.no_grad():
        official_forward(sd, torch.randn(6, 3, size, size, generator=gen),
                         arch, calibrate=True)
    src, dst = tmp_path / 'official.pth', tmp_path / 'ours.pth'
    torch.save({prefix + k: v for k, v in sd.items()}, src)
    conv_tool.convert_file(str(src), str(dst), arch)

    model = _config_model(arch)
    load_checkpoint(model, str(dst), map_location='cpu', strict=True)
    x = torch.randn(3, 3, size, size, generator=gen)
    with torch.no_grad():
        want = official_forward(sd, x, arch)
        got = model(x)
    assert want.std(0).mean() > 0.1  # logits depend on the input
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_state_dict_wrappers_and_missing_num_batches_tracked():
    gen = torch.Generator().manual_seed(1)
    sd = _official_state_dict('resnet20', gen)
    old = {k: v for k, v in sd.items() if 'num_batches_tracked' not in k}
    for ckpt in ({'state_dict': old}, {'model': old, 'best_acc': 91.8}):
        out = conv_tool.convert(conv_tool.unwrap(ckpt), 'resnet20')
        assert out['backbone.layer2.0.bn1.num_batches_tracked'] == 0
        assert out['head.fc.weight'].shape == (10, 64)
        assert 'head.fc.bias' not in out
        _config_model('resnet20').load_state_dict(out, strict=True)


def test_bad_checkpoints_are_named():
    gen = torch.Generator().manual_seed(2)
    sd = _official_state_dict('resnet20', gen)
    with pytest.raises(ValueError, match='wrong --arch'):
        conv_tool.convert(sd, 'resnet32')  # blocks 3, 4 of each stage missing
    with pytest.raises(ValueError, match='does not exist in resnet50'):
        conv_tool.convert(_official_state_dict('resnet32', gen), 'resnet50')
    with pytest.raises(ValueError, match='not in the official'):
        conv_tool.convert(dict(sd, **{'extra.weight': torch.zeros(1)}),
                          'resnet20')
    with pytest.raises(ValueError, match='1x1 conv'):
        conv_tool.convert(dict(sd, **{'fc.weight': torch.zeros(10, 64, 3, 3)}),
                          'resnet20')
    with pytest.raises(ValueError, match='unknown arch'):
        conv_tool.convert(sd, 'resnet18')
    with pytest.raises(ValueError, match='not tensors'):
        conv_tool.unwrap(dict(sd, epoch=3))


def test_tool_converts_and_names_bad_files(tmp_path, run_tool):
    """The script as a user runs it: a conversion, then each bad input is
    one error line (no traceback) and nothing is written."""
    gen = torch.Generator().manual_seed(3)
    src, dst = tmp_path / 'official.pth', tmp_path / 'ours.pth'
    torch.save(_official_state_dict('resnet20', gen), src)
    proc = run_tool([TOOL, str(src), str(dst), '--arch', 'resnet20'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'resnet20:' in proc.stdout and dst.is_file()
    meta = torch.load(dst, weights_only=True)['meta']
    assert meta['adder_layers'] == 20 and meta['arch'] == 'resnet20'

    out = tmp_path / 'never.pth'
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint' * 8)
    for args, needle in (
            ([str(tmp_path / 'nope.pth')], 'official checkpoint not found'),
            ([str(garbage)], 'is not a PyTorch checkpoint'),
            ([str(src), '--arch', 'resnet32'], 'wrong --arch')):
        arch = [] if '--arch' in args else ['--arch', 'resnet20']
        proc = run_tool([TOOL, args[0], str(out)] + args[1:] + arch)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert 'Traceback' not in proc.stderr and needle in proc.stderr, \
            proc.stderr[-3000:]
        assert not out.exists()
