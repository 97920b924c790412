"""AdderConv2d: module attributes, registries, mmcv ConvModule, mmpretrain."""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, build_conv_layer
from mmengine.registry import MODELS, DefaultScope, init_default_scope
from mmpretrain.registry import MODELS as PRETRAIN_MODELS

from adder_mm.models import AdderConv2d
from adder_mm.ops import adder2d


@pytest.fixture
def restore_default_scope():
    """init_default_scope() creates a global DefaultScope; undo it."""
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)


def test_attributes_and_state_dict():
    m = AdderConv2d(6, 12, (3, 5), stride=2, padding=(1, 2), dilation=(2, 1),
                    groups=3)
    assert (m.in_channels, m.out_channels, m.groups) == (6, 12, 3)
    assert m.kernel_size == (3, 5) and m.stride == (2, 2)
    assert m.padding == (1, 2) and m.dilation == (2, 1)
    assert m.transposed is False and m.output_padding == (0, 0)
    assert m.weight.shape == (12, 2, 3, 5)
    assert m.bias is None
    assert list(m.state_dict()) == ['weight']
    assert [n for n, _ in m.named_parameters()] == ['weight']
    mb = AdderConv2d(4, 8, 3, bias=True)
    assert mb.kernel_size == (3, 3) and mb.stride == (1, 1)
    assert mb.padding == (0, 0) and mb.dilation == (1, 1)
    assert list(mb.state_dict()) == ['weight', 'bias']
    assert mb.bias.shape == (8, ) and torch.equal(mb.bias,
                                                  torch.zeros(8))


def test_std_normal_init():
    torch.manual_seed(0)
    w = AdderConv2d(64, 64, 3).weight.detach()  # 36864 samples
    # Kaiming (std ~0.06) or uniform conv init would fail these bounds.
    assert abs(w.mean().item()) < 0.03
    assert abs(w.std().item() - 1.0) < 0.03
    assert (w.abs() > 2).float().mean().item() == pytest.approx(0.0455,
                                                                abs=0.006)


def test_forward_backward_matches_functional():
    torch.manual_seed(1)
    m = AdderConv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True)
    nn.init.normal_(m.bias)
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    y = m(x)
    want = adder2d(x, m.weight, m.bias, stride=2, padding=1, groups=2)
    assert y.shape == (2, 6, 5, 4)
    assert torch.equal(y, want)
    y.sum().backward()
    assert m.weight.grad is not None and m.bias.grad is not None
    assert x.grad.shape == x.shape


def test_bad_construction():
    with pytest.raises(ValueError, match='groups=2 must divide'):
        AdderConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match='string padding'):
        AdderConv2d(3, 4, 3, padding='same')
    m = AdderConv2d(3, 4, 3)
    with pytest.raises(ValueError, match='input has 5 channels'):
        m(torch.randn(1, 5, 6, 6))


def _check_built(layer, bias=False):
    assert type(layer) is AdderConv2d
    assert layer.in_channels == 3 and layer.out_channels == 8
    assert layer.kernel_size == (3, 3) and layer.padding == (1, 1)
    assert (layer.bias is not None) == bias
    y = layer(torch.randn(2, 3, 5, 5))
    assert y.shape == (2, 8, 5, 5)


@pytest.mark.parametrize('name', ['Adder', 'AdderConv2d'])
def test_root_registry(name):
    assert MODELS.get(name) is AdderConv2d
    _check_built(MODELS.build(dict(type=name, in_channels=3, out_channels=8,
                                   kernel_size=3, padding=1, bias=True)),
                 bias=True)


@pytest.mark.parametrize('name', ['Adder', 'AdderConv2d'])
def test_mmpretrain_registry_without_default_scope(name):
    assert DefaultScope.get_current_instance() is None or \
        DefaultScope.get_current_instance().scope_name != 'mmpretrain'
    _check_built(PRETRAIN_MODELS.build(
        dict(type=name, in_channels=3, out_channels=8, kernel_size=3,
             padding=1)))


@pytest.mark.parametrize('name', ['Adder', 'AdderConv2d'])
def test_registries_with_default_scope(name, restore_default_scope):
    cfg = dict(type=name, in_channels=3, out_channels=8, kernel_size=3,
               padding=1)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        _check_built(MODELS.build(cfg))
        _check_built(PRETRAIN_MODELS.build(cfg))
        _check_built(build_conv_layer(dict(type=name), 3, 8, 3, padding=1))
    init_default_scope('mmpretrain')
    assert DefaultScope.get_current_instance().scope_name == 'mmpretrain'
    _check_built(MODELS.build(cfg))
    _check_built(PRETRAIN_MODELS.build(cfg))
    _check_built(build_conv_layer(dict(type=name), 3, 8, 3, padding=1))


def test_build_conv_layer():
    layer = build_conv_layer(dict(type='Adder'), 3, 8, kernel_size=3,
                             padding=1, bias=True)
    _check_built(layer, bias=True)
    # the default conv_cfg stays an ordinary conv
    assert type(build_conv_layer(None, 3, 8, 3)) is nn.Conv2d


def test_conv_module_forward_backward():
    torch.manual_seed(2)
    m = ConvModule(3, 8, 3, stride=2, padding=1, conv_cfg=dict(type='Adder'),
                   norm_cfg=dict(type='BN'))
    assert type(m.conv) is AdderConv2d
    # ConvModule reads these from the conv it wraps
    assert m.with_bias is False and m.conv.bias is None
    assert m.in_channels == 3 and m.out_channels == 8
    assert m.stride == (2, 2) and m.conv.padding == (1, 1)
    assert m.transposed is False and m.output_padding == (0, 0)
    x = torch.randn(4, 3, 9, 9, requires_grad=True)
    y = m(x)
    assert y.shape == (4, 8, 5, 5)
    assert torch.isfinite(y).all() and (y >= 0).all()  # ReLU after BN
    y.square().mean().backward()
    assert m.conv.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0
    # 'auto' bias: no conv bias in front of a norm layer
    assert 'conv.bias' not in m.state_dict()


def test_conv_module_keeps_std_normal_init():
    # ConvModule Kaiming-inits any wrapped conv without its own init_weights.
    torch.manual_seed(4)
    m = ConvModule(64, 64, 3, conv_cfg=dict(type='Adder'),
                   norm_cfg=dict(type='BN'))
    assert abs(m.conv.weight.std().item() - 1.0) < 0.03


@pytest.mark.parametrize('backbone', ['ResNet', 'ResNetV1d'])
def test_mmpretrain_resnet_all_convs_adder(backbone):
    torch.manual_seed(3)
    model = PRETRAIN_MODELS.build(
        dict(type=backbone, depth=18, conv_cfg=dict(type='Adder'),
             out_indices=(3, ), zero_init_residual=False))
    model.init_weights()
    model.train()
    convs = [m for m in model.modules()
             if isinstance(m, (nn.Conv2d, AdderConv2d))]
    adders = [m for m in convs if isinstance(m, AdderConv2d)]
    # ResNet-18: 1 (or 3 in the deep stem) + 16 block convs + 3 downsample
    assert len(adders) == len(convs) == (20 if backbone == 'ResNet' else 22)
    stem = model.conv1 if backbone == 'ResNet' else model.stem[0].conv
    assert isinstance(stem, AdderConv2d)
    x = torch.randn(2, 3, 32, 32)
    (feat, ) = model(x)
    assert feat.shape == (2, 512, 1, 1)
    assert torch.isfinite(feat).all()
    # a random projection: BN in train mode cancels the gradient of a mean
    (feat * torch.randn_like(feat)).sum().backward()
    grads = [m.weight.grad for m in adders]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) == len(adders)


def test_layer_registered_without_mmpretrain(run_python):
    """An MMDetection/MMSegmentation environment (MMEngine + MMCV, no
    MMPretrain): importing adder_mm registers the layer and the optimizer
    constructor, and the MMPretrain subclasses explain what is missing."""
    run_python([
        'import sys',
        "sys.modules['mmpretrain'] = None  # not installed",
        'import torch, adder_mm',
        'from mmcv.cnn import ConvModule',
        'from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS',
        "m = ConvModule(4, 8, 3, padding=1, conv_cfg=dict(type='Adder'),",
        "               norm_cfg=dict(type='BN'))",
        "assert type(m.conv).__name__ == 'AdderConv2d'",
        'assert m(torch.randn(2, 4, 6, 6)).shape == (2, 8, 6, 6)',
        'assert OPTIM_WRAPPER_CONSTRUCTORS.get(',
        "    'AdderOptimWrapperConstructor')",
        "assert not hasattr(adder_mm, 'datasets')",
        'try:',
        '    adder_mm.models.AdderResNet_CIFAR',
        'except ImportError as e:',
        "    assert 'MMPretrain' in str(e), e",
        'else:',
        "    raise AssertionError('no ImportError')",
        "print('ok')",
    ])


def test_layers_and_quantization_with_torch_alone(run_python):
    """Without any OpenMMLab package the layers, the integer layer and
    post-training quantization work (nothing imports MMEngine)."""
    run_python([
        'import sys',
        "for name in ('mmengine', 'mmcv', 'mmpretrain'):",
        '    sys.modules[name] = None  # not installed',
        'import torch',
        'from adder_mm.models.layers import AdderConv2d, QuantAdderConv2d',
        'from adder_mm.quantization import quantize_model',
        'net = torch.nn.Sequential(AdderConv2d(3, 4, 3, padding=1))',
        'x = torch.randn(2, 3, 6, 6)',
        'spec = quantize_model(net, [x], num_batches=1, bits=8)',
        'assert isinstance(net[0], QuantAdderConv2d), net',
        'assert net(x).shape == (2, 4, 6, 6)',
        "assert not any(m.startswith('mmengine') and sys.modules[m]",
        '               for m in sys.modules)',
        "print('ok')",
    ])
