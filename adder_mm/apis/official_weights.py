"""The AdderNet paper's released checkpoints as adder_mm checkpoints (the
library of tools/model_converters/official2mmpretrain.py).

SRC is a state_dict of the paper's reference models (optionally under a
DataParallel ``module.`` prefix, optionally wrapped in a dict under
``state_dict`` or ``model``). The result loads with strict=True into the
model of configs/adder_r20_cifar10.py, adder_r32_cifar10.py or
adder_r50_imagenet.py (any class count: it is read from the classifier's
shape).

Key mapping (official -> ours):
    conv1.weight, bn1.*            -> backbone.conv1.weight, backbone.bn1.*
    layerI.J.convK.adder           -> backbone.layerI.J.convK.weight
    layerI.J.bnK.*                 -> backbone.layerI.J.bnK.*
    layerI.0.downsample.0.adder    -> backbone.layerI.0.downsample.0.weight
    layerI.0.downsample.1.*        -> backbone.layerI.0.downsample.1.*
    fc.weight [C, D, 1, 1]         -> head.fc.weight [C, D]
    fc.bias (ResNet-50)            -> head.fc.bias
    bn2.* (BatchNorm on logits)    -> head.bn.*
"""
import re
from collections import OrderedDict

import torch

from adder_mm.utils.checkpoint import save_atomic

from .checkpoints import read_checkpoint
from .errors import ToolError

# depth-style description of the paper's reference models.
ARCHS = {
    'resnet20': dict(stage_blocks=(3, 3, 3), convs=2, feat_dim=64),
    'resnet32': dict(stage_blocks=(5, 5, 5), convs=2, feat_dim=64),
    'resnet50': dict(stage_blocks=(3, 4, 6, 3), convs=3, feat_dim=2048),
}
BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var',
           'num_batches_tracked')

_STEM = re.compile(r'^(conv1\.weight|bn1\.(\w+))$')
_BLOCK = re.compile(r'^layer(\d+)\.(\d+)\.(conv(\d)\.adder|bn(\d)\.(\w+)|'
                    r'downsample\.0\.adder|downsample\.1\.(\w+))$')
_HEAD = re.compile(r'^(fc\.(weight|bias)|bn2\.(\w+))$')


def unwrap(checkpoint):
    """The state_dict inside a loaded checkpoint, ``module.`` removed."""
    state = checkpoint
    for key in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise ValueError('checkpoint holds no state_dict (expected a dict of '
                         f'tensors), got {type(state).__name__}')
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise ValueError(f'checkpoint entries are not tensors: {bad[:5]}')
    return OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v)
        for k, v in state.items())


def _check_bn(name, suffix):
    if suffix not in BN_KEYS:
        raise ValueError(f'unexpected BatchNorm entry {name!r}')


def convert(state_dict, arch):
    """Official state_dict (no ``module.``) -> our ImageClassifier's keys."""
    if arch not in ARCHS:
        raise ValueError(f'unknown arch {arch!r}; expected one of '
                         f'{sorted(ARCHS)}')
    spec = ARCHS[arch]
    out = OrderedDict()
    unknown = []
    seen_blocks = set()
    for name, value in state_dict.items():
        m = _STEM.match(name)
        if m:
            if m.group(2):
                _check_bn(name, m.group(2))
            out[f'backbone.{name}'] = value
            continue
        m = _BLOCK.match(name)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            if not 1 <= stage <= len(spec['stage_blocks']) or \
                    block >= spec['stage_blocks'][stage - 1]:
                raise ValueError(
                    f'{name!r} does not exist in {arch} (blocks per stage '
                    f'{spec["stage_blocks"]}); wrong --arch?')
            conv_idx = m.group(4) or m.group(5)
            if conv_idx and not 1 <= int(conv_idx) <= spec['convs']:
                raise ValueError(f'{name!r} does not exist in {arch} '
                                 f'({spec["convs"]} convs per block); '
                                 'wrong --arch?')
            if m.group(6):
                _check_bn(name, m.group(6))
            if m.group(7):
                _check_bn(name, m.group(7))
            seen_blocks.add((stage, block))
            ours = name[:-len('.adder')] + '.weight' if name.endswith(
                '.adder') else name
            out[f'backbone.{ours}'] = value
            continue
        m = _HEAD.match(name)
        if m:
            if m.group(2) == 'weight':
                if value.dim() == 4:
                    if value.shape[2:] != (1, 1):
                        raise ValueError(
                            f'fc.weight must be a 1x1 conv [C, D, 1, 1], got '
                            f'{tuple(value.shape)}')
                    value = value.flatten(1)
                if value.dim() != 2 or value.shape[1] != spec['feat_dim']:
                    raise ValueError(
                        f'fc.weight of {arch} must be [C, '
                        f'{spec["feat_dim"]}, 1, 1], got '
                        f'{tuple(value.shape)}')
                out['head.fc.weight'] = value
            elif m.group(2) == 'bias':
                out['head.fc.bias'] = value
            else:
                _check_bn(name, m.group(3))
                out[f'head.bn.{m.group(3)}'] = value
            continue
        unknown.append(name)
    if unknown:
        raise ValueError(f'keys not in the official {arch} layout: '
                         f'{unknown[:10]}')
    expected = {(s + 1, b) for s, n in enumerate(spec['stage_blocks'])
                for b in range(n)}
    if seen_blocks != expected:
        raise ValueError(f'{arch} blocks missing from the checkpoint: '
                         f'{sorted(expected - seen_blocks)[:10]}; wrong '
                         '--arch?')
    if 'head.fc.weight' not in out:
        raise ValueError('checkpoint has no classifier fc.weight')
    # Checkpoints from torch < 0.4.1 have no num_batches_tracked; our model
    # has the buffer, and its value only matters for momentum=None BN.
    for key in list(out):
        if key.endswith('.running_mean'):
            tracked = key[:-len('running_mean')] + 'num_batches_tracked'
            out.setdefault(tracked, torch.tensor(0, dtype=torch.long))
    return out


def build_model(arch, num_classes, bias):
    """Our ImageClassifier matching an official model (for verification)."""
    from mmpretrain.registry import MODELS

    import adder_mm  # noqa: F401  (registers the models)

    if arch == 'resnet50':
        backbone = dict(type='AdderResNet', depth=50)
    else:
        backbone = dict(type='AdderResNet_CIFAR', depth=int(arch[6:]))
    return MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=backbone,
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearBNClsHead',
                num_classes=num_classes,
                in_channels=ARCHS[arch]['feat_dim'],
                bias=bias)))


def convert_file(src, dst, arch):
    """Read an official checkpoint safely, convert it, check that it loads
    strictly into our model, and write it atomically (nothing is written
    on failure). Returns (number of tensors, classes, head bias).

    Raises:
        ToolError: naming what is wrong with the file.
    """
    from adder_mm.models.layers import ADDER_LAYERS_KEY, count_adder_layers
    checkpoint = read_checkpoint(src, 'official checkpoint')
    try:
        state = convert(unwrap(checkpoint), arch)
    except ValueError as e:
        raise ToolError(f'official checkpoint {src!r}: {e}') from None
    num_classes = state['head.fc.weight'].shape[0]
    bias = 'head.fc.bias' in state
    model = build_model(arch, num_classes, bias)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ToolError(f'official checkpoint {src!r} does not fit the '
                        f'{arch} model: {str(e).splitlines()[0]}') from None
    save_atomic(
        dict(state_dict=state,
             meta={'converted_from': str(src), 'arch': arch,
                   'num_classes': int(num_classes),
                   ADDER_LAYERS_KEY: count_adder_layers(model)}), dst)
    return len(state), int(num_classes), bias
