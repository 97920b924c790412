"""The paper configs: recipe values, and every config trains 2 iterations.

The smoke runs replace the dataset by a few generated 16x16 PNGs
(mmpretrain's CustomDataset) and the 32/224 px crops by 16 px ones, so each
config builds a real Runner and runs two training iterations and a validation
epoch in seconds on a CPU.
"""
import copy
import functools
import math
import os.path as osp

import mmcv
import mmpretrain
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

import adder_mm  # noqa: F401
from adder_mm.models import AdderConv2d

MMPRETRAIN_CONFIGS = osp.join(osp.dirname(mmpretrain.__file__), '.mim',
                              'configs')
CONFIG_DIR = osp.join(osp.dirname(osp.dirname(__file__)), 'configs')
CIFAR = ['r20_cifar10', 'r32_cifar10', 'r20_cifar100', 'r32_cifar100']
IMAGENET = ['r18_imagenet', 'r50_imagenet']
NAMES = [f'{kind}_{arch}' for arch in CIFAR + IMAGENET
         for kind in ('adder', 'cnn')]

# PAPER.md: CIFAR normalisation in [0, 1] units.
PAPER_MEAN = (0.4914, 0.4822, 0.4465)
PAPER_STD = (0.2023, 0.1994, 0.2010)


@functools.lru_cache(maxsize=None)
def _load_cached(name):
    return Config.fromfile(osp.join(CONFIG_DIR, f'{name}.py'))


def _load(name):
    """A fresh copy of a config (parsing the mmpretrain:: bases is slow)."""
    return copy.deepcopy(_load_cached(name))


def _unscoped(obj):
    """obj without the ``_scope_`` keys that ``mmpretrain::`` bases add."""
    if isinstance(obj, dict):
        return {k: _unscoped(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unscoped(v) for v in obj)
    return obj


def _lrs_by_epoch(cfg, model, epochs):
    """lr of the first param group at the start of each epoch in `epochs`,
    from the config's optim_wrapper and param_scheduler built by MMEngine."""
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    scheduler = PARAM_SCHEDULERS.build(
        dict(cfg.param_scheduler, optimizer=optim_wrapper))
    lrs = {}
    for epoch in range(max(epochs) + 1):
        lrs[epoch] = optim_wrapper.get_lr()['lr'][0]
        scheduler.step()  # by_epoch: one step per epoch
    return optim_wrapper, [lrs[e] for e in epochs]


@pytest.mark.parametrize('name', [f'adder_{a}' for a in CIFAR])
def test_cifar_recipe(name):
    cfg = _load(name)
    assert cfg.custom_imports == dict(
        imports=['adder_mm'], allow_failed_imports=False)
    assert cfg.train_cfg.max_epochs == 400 and cfg.train_cfg.by_epoch
    assert cfg.train_dataloader.batch_size == 256
    assert cfg.auto_scale_lr.base_batch_size == 256
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ('SGD', 0.1,
                                                                  0.9, 5e-4)
    assert cfg.optim_wrapper.constructor == 'AdderOptimWrapperConstructor'
    assert cfg.optim_wrapper.paramwise_cfg.adder_eta == 0.2
    assert not opt.get('nesterov', False)
    pre = cfg.data_preprocessor
    np.testing.assert_allclose(pre.mean, np.array(PAPER_MEAN) * 255)
    np.testing.assert_allclose(pre.std, np.array(PAPER_STD) * 255)
    assert pre.to_rgb is False  # CIFAR arrays are RGB already
    steps = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert (steps['RandomCrop'].crop_size, steps['RandomCrop'].padding) == (
        32, 4)
    assert steps['RandomFlip'].direction == 'horizontal'
    assert steps['RandomFlip'].prob == 0.5
    classes = 100 if name.endswith('cifar100') else 10
    assert cfg.model.head.num_classes == classes == pre.num_classes

    model = MODELS.build(cfg.model)
    epochs = [0, 1, 100, 200, 300, 399]
    optim_wrapper, lrs = _lrs_by_epoch(cfg, model, epochs)
    want = [0.05 * (1 + math.cos(math.pi * e / 400)) for e in epochs]
    np.testing.assert_allclose(lrs, want, rtol=1e-6, atol=1e-12)
    # Weight decay on every parameter (BN and biases included).
    groups = optim_wrapper.optimizer.param_groups
    n_params = sum(len(g['params']) for g in groups)
    assert n_params == len(list(model.parameters()))
    assert all(g['weight_decay'] == 5e-4 for g in groups)


@pytest.mark.parametrize('name', [f'adder_{a}' for a in IMAGENET])
def test_imagenet_recipe(name):
    cfg = _load(name)
    assert cfg.train_cfg.max_epochs == 150
    # lr 0.1 at 8 GPUs x 32 = 256, the auto_scale_lr base.
    assert cfg.train_dataloader.batch_size * 8 == 256
    assert cfg.auto_scale_lr.base_batch_size == 256
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ('SGD', 0.1,
                                                                  0.9, 1e-4)
    assert cfg.optim_wrapper.paramwise_cfg.adder_eta == 0.2
    # mmpretrain's ImageNet pipeline, inherited unchanged.
    base = Config.fromfile(
        osp.join(MMPRETRAIN_CONFIGS, '_base_/datasets/imagenet_bs32.py'))
    assert _unscoped(cfg.train_pipeline) == base.train_pipeline
    assert _unscoped(cfg.val_dataloader.dataset.pipeline) == base.test_pipeline
    assert _unscoped(cfg.data_preprocessor) == base.data_preprocessor

    model = MODELS.build(cfg.model)
    epochs = [0, 1, 75, 149]
    _, lrs = _lrs_by_epoch(cfg, model, epochs)
    want = [0.05 * (1 + math.cos(math.pi * e / 150)) for e in epochs]
    np.testing.assert_allclose(lrs, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize('arch', CIFAR + IMAGENET)
def test_cnn_twin_differs_only_in_backbone_conv(arch):
    adder, cnn = _load(f'adder_{arch}'), _load(f'cnn_{arch}')
    assert adder.model.backbone.conv_cfg == dict(type='Adder')
    assert cnn.model.backbone.conv_cfg is None
    a, c = adder.to_dict(), cnn.to_dict()
    a['model']['backbone'].pop('conv_cfg')
    c['model']['backbone'].pop('conv_cfg')
    assert a == c


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """4 random 16x16 PNGs in 2 class folders (CustomDataset layout)."""
    root = tmp_path_factory.mktemp('tiny_images')
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        mmcv.imwrite(img, str(root / f'class{i % 2}' / f'{i}.png'))
    return str(root)


def _tiny(cfg, root, work_dir):
    """Shrink a config to 2 train iterations (batch 2), 1 val batch, 16 px."""
    imagenet = 'imagenet' in cfg.filename
    pipelines = {}
    for split in ('train', 'val'):
        pipeline = cfg[f'{split}_dataloader'].dataset.pipeline
        if not imagenet:  # CIFAR datasets hand over arrays, not files
            pipeline = [dict(type='LoadImageFromFile')] + pipeline
        for t in pipeline:
            if t['type'] == 'RandomResizedCrop':
                t['scale'] = 16
            elif t['type'] == 'ResizeEdge':
                t['scale'] = 18
            elif t['type'] == 'CenterCrop':
                t['crop_size'] = 16
            elif t['type'] == 'RandomCrop':
                t['crop_size'], t['padding'] = 16, 2
        pipelines[split] = pipeline
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'] = dict(
            batch_size=2 if split == 'train' else 4,
            num_workers=0,
            persistent_workers=False,
            sampler=dict(type='DefaultSampler', shuffle=split == 'train'),
            dataset=dict(
                type='CustomDataset',
                data_root=root,
                pipeline=pipelines['train' if split == 'train' else 'val']))
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=0)
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    return cfg


@pytest.mark.parametrize('name', NAMES)
def test_config_trains_two_iterations_and_validates(name, image_folder,
                                                    tmp_path):
    cfg = _tiny(_load(name), image_folder, str(tmp_path))
    runner = Runner.from_cfg(cfg)
    adders = [m for m in runner.model.modules() if isinstance(m, AdderConv2d)]
    assert bool(adders) == name.startswith('adder_')
    watched = (adders[0] if adders else runner.model.backbone.layer1[0].conv1
               ).weight.detach().clone()
    runner.train()
    assert runner.iter == 2 and runner.epoch == 1
    normalizer = runner.optim_wrapper.adder_grad_normalizer
    assert (normalizer is not None) == name.startswith('adder_')
    layer = adders[0] if adders else runner.model.backbone.layer1[0].conv1
    assert not torch.equal(watched, layer.weight.detach())
    hub = runner.message_hub
    losses = hub.get_scalar('train/loss').data[0]
    # Only the first loss must be finite: after one lr-0.1 step on 2 random
    # images, BN over 2 samples at 1x1 (ResNet-50 at 16 px) may blow up.
    assert len(losses) == 2 and math.isfinite(losses[0])
    assert 0 <= hub.get_scalar('val/accuracy/top1').current() <= 100
