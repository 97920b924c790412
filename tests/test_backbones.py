"""AdderResNet / AdderResNet_CIFAR: structure, shapes, init, ResNet options."""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck
from mmpretrain.registry import MODELS

import adder_mm  # noqa: F401  (registers the models)
from adder_mm.models import AdderConv2d, AdderResNet, AdderResNet_CIFAR


def _adders(m):
    return [x for x in m.modules() if isinstance(x, AdderConv2d)]


def _convs(m):
    return [x for x in m.modules() if type(x) is nn.Conv2d]


def _paper_cifar_params(n, classes=10):
    """Parameters of He et al.'s CIFAR ResNet-(6n+2), counted by hand.

    3x3 stem conv 3->16 + BN; stage widths 16/32/64, n BasicBlocks each
    (two 3x3 convs + BNs); 1x1 shortcut conv + BN entering stages 2 and 3;
    head Linear(64, classes, no bias) + BatchNorm1d(classes).
    """
    total = 3 * 16 * 9 + 2 * 16
    cin = 16
    for width in (16, 32, 64):
        for i in range(n):
            total += cin * width * 9 + width * width * 9 + 4 * width
            if i == 0 and cin != width:
                total += cin * width + 2 * width
            cin = width
    return total + 64 * classes + 2 * classes


def test_resnet20_structure_and_param_count():
    model = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='AdderResNet_CIFAR', depth=20),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearBNClsHead',
                num_classes=10,
                in_channels=64,
                bias=False)))
    bb = model.backbone
    # Stem and classifier stay multiplication-based; 18 block convs and the
    # two shortcut convs are adders.
    assert type(bb.conv1) is nn.Conv2d and bb.conv1.kernel_size == (3, 3)
    assert bb.conv1.out_channels == 16 and bb.conv1.stride == (1, 1)
    assert not hasattr(bb, 'maxpool') or not any(
        isinstance(m, nn.MaxPool2d) for m in bb.modules())
    assert len(_adders(bb)) == 20 and len(_convs(bb)) == 1
    assert [bb.layer2[0].downsample[0].stride,
            bb.layer3[0].downsample[0].stride] == [(2, 2), (2, 2)]
    assert isinstance(bb.layer2[0].downsample[0], AdderConv2d)
    assert [len(getattr(bb, f'layer{i}')) for i in (1, 2, 3)] == [3, 3, 3]
    assert bb.feat_dim == 64
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == _paper_cifar_params(3)
    assert round(n_params / 1e6, 2) == 0.27  # the paper's 0.27M
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cnn_twin_differs_only_in_conv_type():
    adder = AdderResNet_CIFAR(depth=20)
    cnn = AdderResNet_CIFAR(depth=20, conv_cfg=None)
    assert not _adders(cnn) and len(_convs(cnn)) == 21
    sa, sc = adder.state_dict(), cnn.state_dict()
    assert list(sa) == list(sc)
    assert all(sa[k].shape == sc[k].shape for k in sa)


@pytest.mark.parametrize('depth,blocks', [(20, 3), (32, 5), (44, 7),
                                          (56, 9), (110, 18)])
def test_paper_cifar_depths_shapes(depth, blocks):
    bb = AdderResNet_CIFAR(depth=depth, out_indices=(0, 1, 2)).eval()
    assert [len(bb.layer1), len(bb.layer2), len(bb.layer3)] == [blocks] * 3
    assert len(_adders(bb)) == 6 * blocks + 2
    with torch.no_grad():
        outs = bb(torch.randn(1, 3, 16, 16))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 16, 16), (1, 32, 8, 8),
                                             (1, 64, 4, 4)]


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_wide_cifar_and_imagenet_depths_shapes(depth):
    exp = 1 if depth < 50 else 4
    cifar = AdderResNet_CIFAR(depth=depth).eval()
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.out_channels == 64
    imnet = AdderResNet(depth=depth).eval()
    assert type(imnet.conv1) is nn.Conv2d and imnet.conv1.kernel_size == (7,
                                                                         7)
    block = Bottleneck if depth >= 50 else BasicBlock
    for bb in (cifar, imnet):
        # Every conv but the stem is an adder (incl. each stage's shortcut).
        convs_per_block = 3 if depth >= 50 else 2
        n_blocks = sum(len(getattr(bb, f'layer{i}')) for i in range(1, 5))
        n_down = sum(
            getattr(bb, f'layer{i}')[0].downsample is not None
            for i in range(1, 5))
        assert len(_adders(bb)) == convs_per_block * n_blocks + n_down
        assert len(_convs(bb)) == 1
        assert all(isinstance(b, block) for b in bb.layer1)
    with torch.no_grad():
        assert tuple(cifar(torch.randn(1, 3, 8, 8))[-1].shape) == (1,
                                                                   512 * exp,
                                                                   1, 1)
        assert tuple(imnet(torch.randn(1, 3, 32, 32))[-1].shape) == (1,
                                                                     512 * exp,
                                                                     1, 1)


def test_init_weights_sets_adder_weights_std_normal():
    bb = AdderResNet(depth=18)
    for m in _adders(bb):
        nn.init.zeros_(m.weight)  # a skipped init would leave these at 0
    bb.init_weights()
    w = torch.cat([m.weight.detach().flatten() for m in _adders(bb)])
    assert w.numel() > 1e6
    assert abs(w.mean().item()) < 0.01 and abs(w.std().item() - 1) < 0.01
    # The ordinary stem conv gets mmpretrain's Kaiming (fan_out, relu).
    std = bb.conv1.weight.std().item()
    expected = (2 / (64 * 7 * 7))**0.5
    assert abs(std - expected) < 0.1 * expected
    # zero_init_residual (mmpretrain's default) still zeroes the last BN.
    assert all(b.norm2.weight.abs().sum() == 0 for b in bb.layer1)


def test_adder_deep_stem_keeps_std_normal_after_init():
    # The deep stem's ConvModules sit in an nn.Sequential: only init_cfg
    # reaches them, and it must make the adder stem convs std-normal.
    bb = AdderResNet(
        depth=18, deep_stem=True, stem_conv_cfg=dict(type='Adder'))
    stem = [m.conv for m in bb.stem if isinstance(m, ConvModule)]
    assert len(stem) == 3 and all(isinstance(c, AdderConv2d) for c in stem)
    for c in stem:
        nn.init.zeros_(c.weight)
    bb.init_weights()
    w = torch.cat([c.weight.detach().flatten() for c in stem])
    assert abs(w.std().item() - 1) < 0.05


def test_options_out_indices_frozen_norm_eval():
    bb = AdderResNet_CIFAR(
        depth=20, out_indices=(0, 2), frozen_stages=1, norm_eval=True)
    bb.train()
    frozen = [bb.conv1, bb.norm1, bb.layer1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in bb.layer2.parameters())
    assert not bb.layer1.training and bb.layer2.training
    assert all(not m.training for m in bb.modules()
               if isinstance(m, nn.BatchNorm2d))
    outs = bb(torch.randn(2, 3, 8, 8))
    assert [o.shape[1] for o in outs] == [16, 64]


def test_options_with_cp_matches_plain():
    torch.manual_seed(0)
    plain = AdderResNet_CIFAR(depth=20, zero_init_residual=False)
    cp = AdderResNet_CIFAR(depth=20, with_cp=True, zero_init_residual=False)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8)
    grads = []
    for bb in (plain, cp):
        bb.train()
        bb(x)[-1].square().mean().backward()
        grads.append(bb.layer2[0].conv1.weight.grad.clone())
    assert all(b.with_cp for b in cp.layer1)
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_options_zero_init_residual_off():
    bb = AdderResNet_CIFAR(depth=20, zero_init_residual=False)
    bb.init_weights()
    assert all((b.norm2.weight == 1).all() for b in bb.layer3)


def test_options_deep_stem_avg_down_drop_path_norm_cfg():
    bb = AdderResNet(
        depth=50,
        deep_stem=True,
        avg_down=True,
        drop_path_rate=0.1,
        norm_cfg=dict(type='GN', num_groups=4))
    # Deep stem stays ordinary conv by default.
    assert all(type(m.conv) is nn.Conv2d for m in bb.stem)
    down = bb.layer2[0].downsample
    assert isinstance(down[0], nn.AvgPool2d) and isinstance(down[1],
                                                            AdderConv2d)
    assert down[1].stride == (1, 1)
    probs = [b.drop_path.drop_prob for b in bb.layer4]
    assert probs[-1] == pytest.approx(0.1) and probs[0] < probs[-1]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in bb.modules())
    bb.train()
    out = bb(torch.randn(2, 3, 32, 32))[-1]
    assert out.shape == (2, 2048, 1, 1)


def test_stem_conv_cfg_adder_and_cnn_twin():
    bb = AdderResNet_CIFAR(depth=20, stem_conv_cfg=dict(type='Adder'))
    assert isinstance(bb.conv1, AdderConv2d) and len(_adders(bb)) == 21
    twin = AdderResNet(depth=18, conv_cfg=None)
    assert not _adders(twin)


def test_bad_arguments():
    with pytest.raises(KeyError, match='invalid depth'):
        AdderResNet_CIFAR(depth=21)
    with pytest.raises(KeyError, match='invalid depth'):
        AdderResNet(depth=20)
    with pytest.raises(TypeError, match='conv_cfg'):
        AdderResNet_CIFAR(depth=20, conv_cfg='Adder')
    with pytest.raises(TypeError, match='stem_conv_cfg'):
        AdderResNet(depth=18, stem_conv_cfg=dict(kernel_size=3))


def test_cifar_num_stages_takes_the_first_stages():
    """num_stages alone used to keep the 3-stage strides and out_indices,
    and mmpretrain's bare asserts said nothing; the layout is cut to it."""
    bb = AdderResNet_CIFAR(depth=20, num_stages=2)
    assert bb.strides == (1, 2) and bb.out_indices == (1, )
    assert bb(torch.randn(1, 3, 32, 32))[0].shape == (1, 32, 16, 16)
    for kwargs, match in [
            (dict(num_stages=4), 'num_stages must be an int in 1..3'),
            (dict(num_stages=0), 'num_stages'),
            (dict(strides=(1, 2)), r'strides \(1, 2\) has 2 entries'),
            (dict(num_stages=2, dilations=(1, 1, 1)), 'dilations'),
            (dict(out_indices=(3, )), 'out_indices'),
            (dict(out_indices=(-1, )), 'out_indices'),  # never matched
    ]:
        with pytest.raises(ValueError, match=match):
            AdderResNet_CIFAR(depth=20, **kwargs)
