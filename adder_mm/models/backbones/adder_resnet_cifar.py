"""CIFAR ResNets with adder block and shortcut convs."""
import copy

from mmpretrain.models.backbones import ResNet_CIFAR
from mmpretrain.models.backbones.resnet import BasicBlock
from mmpretrain.registry import MODELS

from .adder_resnet import (
    ADDER_RESNET_INIT_CFG,
    DEFAULT_ADDER_CFG,
    AdderStemMixin,
    _check_conv_cfg,
)

# He et al.'s CIFAR ResNets (depth 6n+2), the paper's ResNet-20/32.
_PAPER_CIFAR_ARCHS = {
    20: (BasicBlock, (3, 3, 3)),
    32: (BasicBlock, (5, 5, 5)),
    44: (BasicBlock, (7, 7, 7)),
    56: (BasicBlock, (9, 9, 9)),
    110: (BasicBlock, (18, 18, 18)),
}
# Stem/stage layout of those nets: 16 -> 16/32/64 channels, strides 1/2/2.
_PAPER_CIFAR_DEFAULTS = dict(
    stem_channels=16,
    base_channels=16,
    num_stages=3,
    strides=(1, 2, 2),
    dilations=(1, 1, 1),
    out_indices=(2, ))
# mmpretrain ResNet_CIFAR's ImageNet-width layout for depths 18..152.
_WIDE_CIFAR_DEFAULTS = dict(
    stem_channels=64,
    base_channels=64,
    num_stages=4,
    strides=(1, 2, 2, 2),
    dilations=(1, 1, 1, 1),
    out_indices=(3, ))


@MODELS.register_module()
class AdderResNet_CIFAR(AdderStemMixin, ResNet_CIFAR):
    """CIFAR ResNet with adder block and shortcut convs.

    - depth 20/32/44/56/110: the paper's CIFAR ResNets. 3x3 stem conv to 16
      channels, BN, ReLU, no maxpool; three stages of BasicBlocks with
      16/32/64 channels and strides 1/2/2; 1x1 strided shortcut conv + BN
      where the shape changes. ``feat_dim`` = 64.
    - depth 18/34/50/101/152: mmpretrain's ResNet_CIFAR (3x3 stem to 64
      channels, four ImageNet-width stages, no maxpool).

    Args:
        depth (int): one of 20, 32, 44, 56, 110, 18, 34, 50, 101, 152.
        conv_cfg (dict | None): block and shortcut convs; default
            ``dict(type='Adder')``, ``None`` = nn.Conv2d (the CNN twin).
        stem_conv_cfg (dict | None): the stem conv; default ``None``
            (nn.Conv2d, as in the paper).
        stem_channels, base_channels, num_stages, strides, dilations,
        out_indices: ``None`` takes the per-depth layout above; with
            ``num_stages`` given, its first stages (and the last as output).
        **kwargs: every other mmpretrain ResNet argument (frozen_stages,
            norm_eval, with_cp, zero_init_residual, avg_down,
            drop_path_rate, norm_cfg, ...).

    Shapes: input [N, 3, 32, 32] -> last stage [N, 64, 8, 8] for the paper
    depths, [N, 512 * expansion, 4, 4] for the wide ones.
    """

    arch_settings = {**ResNet_CIFAR.arch_settings, **_PAPER_CIFAR_ARCHS}

    def __init__(self,
                 depth,
                 conv_cfg=DEFAULT_ADDER_CFG,
                 stem_conv_cfg=None,
                 stem_channels=None,
                 base_channels=None,
                 num_stages=None,
                 strides=None,
                 dilations=None,
                 out_indices=None,
                 init_cfg=ADDER_RESNET_INIT_CFG,
                 **kwargs):
        if depth not in self.arch_settings:
            raise KeyError(
                f'AdderResNet_CIFAR: invalid depth {depth!r}; expected one of '
                f'{sorted(self.arch_settings)}')
        defaults = (_PAPER_CIFAR_DEFAULTS if depth in _PAPER_CIFAR_ARCHS
                    else _WIDE_CIFAR_DEFAULTS)
        given = dict(
            stem_channels=stem_channels,
            base_channels=base_channels,
            num_stages=num_stages,
            strides=strides,
            dilations=dilations,
            out_indices=out_indices)
        layout = {k: defaults[k] if v is None else v for k, v in given.items()}
        stages = layout['num_stages']
        blocks = len(self.arch_settings[depth][1])
        if isinstance(stages, bool) or not isinstance(stages, int) or \
                not 1 <= stages <= blocks:
            raise ValueError(f'AdderResNet_CIFAR: num_stages must be an int '
                             f'in 1..{blocks} for depth {depth}, got '
                             f'{stages!r}')
        if num_stages is not None:  # a shorter net: the first stages
            for key in ('strides', 'dilations'):
                if given[key] is None:
                    layout[key] = defaults[key][:stages]
            if out_indices is None:
                layout['out_indices'] = (stages - 1, )
        for key in ('strides', 'dilations'):
            if len(layout[key]) != stages:
                raise ValueError(
                    f'AdderResNet_CIFAR: {key} {tuple(layout[key])} has '
                    f'{len(layout[key])} entries for {stages} stages')
        if not all(0 <= i < stages for i in layout['out_indices']):
            raise ValueError(
                f'AdderResNet_CIFAR: out_indices '
                f'{tuple(layout["out_indices"])} must name stages of '
                f'0..{stages - 1}')
        self.stem_conv_cfg = _check_conv_cfg(stem_conv_cfg, 'stem_conv_cfg')
        super().__init__(
            depth,
            conv_cfg=_check_conv_cfg(conv_cfg, 'conv_cfg'),
            init_cfg=copy.deepcopy(init_cfg),
            **layout,
            **kwargs)
