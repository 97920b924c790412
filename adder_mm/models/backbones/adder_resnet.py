"""ResNets whose block and shortcut convolutions are adder layers.

Built by subclassing mmpretrain's ResNet: mmpretrain's blocks and ResLayer
already route every 1x1/3x3 block conv and every downsample conv through
``build_conv_layer(conv_cfg, ...)``, so ``conv_cfg=dict(type='Adder')`` turns
them into :class:`AdderConv2d`. The only structural change is the stem, which
gets its own ``stem_conv_cfg`` (ordinary conv by default, as in the paper).
"""
import copy

from mmpretrain.models.backbones import ResNet
from mmpretrain.registry import MODELS

# mmpretrain's ResNet init plus an explicit std-normal init of the adder
# weights (the paper's code). mmengine matches ``layer`` against class (and
# base class) names, so Kaiming(layer='Conv2d') never reaches AdderConv2d;
# and BaseModule.init_weights() only calls the init_weights() of children
# it can reach through BaseModules, which stops at mmpretrain's ResLayer and
# the deep stem (plain nn.Sequential), so AdderConv2d.init_weights() is not
# run there either. Without the Normal entry, init_weights() would leave the
# adder weights as they were (checked in tests/test_backbones.py).
ADDER_RESNET_INIT_CFG = [
    dict(type='Kaiming', layer=['Conv2d']),
    dict(type='Normal', layer=['AdderConv2d'], mean=0., std=1.),
    dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm']),
]

DEFAULT_ADDER_CFG = dict(type='Adder')


def _check_conv_cfg(cfg, name):
    if cfg is not None and not (isinstance(cfg, dict) and 'type' in cfg):
        raise TypeError(f'{name} must be None (nn.Conv2d) or a dict with a '
                        f"'type' key such as dict(type='Adder'), got {cfg!r}")
    return copy.deepcopy(cfg)


class AdderStemMixin:
    """Build the stem with ``stem_conv_cfg`` instead of ``conv_cfg``.

    mmpretrain's ``_make_stem_layer`` (plain, deep and CIFAR stems) reads
    ``self.conv_cfg``; we point it at the stem's cfg for the duration of the
    call, so every stem variant of the parent class is reused unchanged.
    """

    def _make_stem_layer(self, *args, **kwargs):
        block_conv_cfg = self.conv_cfg
        self.conv_cfg = self.stem_conv_cfg
        try:
            super()._make_stem_layer(*args, **kwargs)
        finally:
            self.conv_cfg = block_conv_cfg

    def train(self, mode=True):
        # mmpretrain's ResNet.train() returns None; nn.Module's returns self.
        super().train(mode)
        return self


@MODELS.register_module()
class AdderResNet(AdderStemMixin, ResNet):
    """ResNet (18/34/50/101/152) with adder block and shortcut convs.

    Same arguments and outputs as mmpretrain's ``ResNet`` (out_indices,
    frozen_stages, norm_eval, with_cp, zero_init_residual, deep_stem,
    avg_down, drop_path_rate, norm_cfg, ...), plus:

    Args:
        conv_cfg (dict | None): conv of every block conv and downsample
            shortcut conv. Default ``dict(type='Adder')``; ``None`` gives the
            CNN twin (nn.Conv2d), identical otherwise.
        stem_conv_cfg (dict | None): conv of the stem (7x7 conv, or the three
            3x3 convs with ``deep_stem``). Default ``None`` = nn.Conv2d: the
            paper keeps the first layer multiplication-based.
        init_cfg: default as mmpretrain's ResNet plus std-normal init of
            AdderConv2d weights (the paper's code).

    Shapes: input [N, in_channels, H, W]; stage i outputs
    [N, base_channels * expansion * 2**i, H / 2**(i+2), W / 2**(i+2)].
    """

    def __init__(self,
                 depth,
                 conv_cfg=DEFAULT_ADDER_CFG,
                 stem_conv_cfg=None,
                 init_cfg=ADDER_RESNET_INIT_CFG,
                 **kwargs):
        # Read by _make_stem_layer inside ResNet.__init__.
        self.stem_conv_cfg = _check_conv_cfg(stem_conv_cfg, 'stem_conv_cfg')
        super().__init__(
            depth,
            conv_cfg=_check_conv_cfg(conv_cfg, 'conv_cfg'),
            init_cfg=copy.deepcopy(init_cfg),
            **kwargs)


@MODELS.register_module()
class AdderResNetV1c(AdderResNet):
    """AdderResNet with mmpretrain's V1c layout (deep 3x3 stem)."""

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=False, **kwargs)


@MODELS.register_module()
class AdderResNetV1d(AdderResNet):
    """AdderResNet with mmpretrain's V1d layout (deep stem, avg-pool down)."""

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=True, **kwargs)
