"""Switching configs nobody here wrote to adders, both ways the README shows.

Each case writes the user's config (``_base_`` = an mmpretrain config plus the
three documented lines), loads it with mmengine's Config, builds the model and
the optimizer wrapper, and runs a forward pass on a small input.
"""
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmpretrain.registry import MODELS

import adder_mm  # noqa: F401
from adder_mm.models import AdderConv2d

SNIPPETS = {
    # (1) swap the backbone type for an adder backbone.
    'adder_backbone': """
custom_imports = dict(imports=['adder_mm'], allow_failed_imports=False)
model = dict(backbone=dict(type='{adder_type}'))
optim_wrapper = dict(constructor='AdderOptimWrapperConstructor', paramwise_cfg=dict(adder_eta=0.2))
""",  # noqa: E501
    # (2) keep mmpretrain's backbone, make its convs adders (stem included).
    'conv_cfg': """
custom_imports = dict(imports=['adder_mm'], allow_failed_imports=False)
model = dict(backbone=dict(conv_cfg=dict(type='Adder')))
optim_wrapper = dict(constructor='AdderOptimWrapperConstructor', paramwise_cfg=dict(adder_eta=0.2))
""",  # noqa: E501
}
# base config, its mmpretrain backbone, the adder backbone for way (1).
BASES = {
    'resnet50': ('resnet/resnet50_8xb32_in1k.py', 'ResNet', 'AdderResNet'),
    'resnetv1d50': ('resnet/resnetv1d50_8xb32_in1k.py', 'ResNetV1d',
                    'AdderResNetV1d'),
}


def _user_config(tmp_path, base, way):
    path, _, adder_type = BASES[base]
    text = f"_base_ = 'mmpretrain::{path}'\n" + SNIPPETS[way].format(
        adder_type=adder_type)
    assert len(SNIPPETS[way].strip().splitlines()) == 3
    file = tmp_path / f'{base}_{way}.py'
    file.write_text(text)
    return Config.fromfile(str(file))


@pytest.mark.parametrize('base', list(BASES))
@pytest.mark.parametrize('way', list(SNIPPETS))
def test_swap_builds_and_runs(base, way, tmp_path):
    cfg = _user_config(tmp_path, base, way)
    _, cnn_type, adder_type = BASES[base]
    assert cfg.model.backbone.type == (adder_type if way == 'adder_backbone'
                                       else cnn_type)
    model = MODELS.build(cfg.model)
    model.init_weights()
    bb = model.backbone
    adders = [m for m in bb.modules() if isinstance(m, AdderConv2d)]
    convs = [m for m in bb.modules() if type(m) is nn.Conv2d]
    stem = [bb.conv1] if hasattr(bb, 'conv1') else [m.conv for m in bb.stem]
    # Every block and shortcut conv of ResNet-50 is an adder: 16 blocks x 3
    # plus 4 shortcuts; way (2) turns the stem into adders too.
    n_stem = len(stem)
    if way == 'conv_cfg':
        assert all(isinstance(c, AdderConv2d) for c in stem)
        assert len(adders) == 16 * 3 + 4 + n_stem and not convs
    else:
        assert all(type(c) is nn.Conv2d for c in stem)
        assert len(adders) == 16 * 3 + 4 and len(convs) == n_stem
    # Whatever init_cfg reached them, adder weights end std-normal.
    w = torch.cat([m.weight.detach().flatten() for m in adders])
    assert abs(w.std().item() - 1) < 0.01 and abs(w.mean().item()) < 0.01
    for c in stem:
        if isinstance(c, AdderConv2d):
            assert abs(c.weight.std().item() - 1) < 0.2

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    normalizer = optim_wrapper.adder_grad_normalizer
    assert len(normalizer.params) == len(adders)

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 1000)
