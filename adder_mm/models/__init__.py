"""AdderConv2d, QATAdderConv2d and QuantAdderConv2d (torch alone;
registered into MMEngine's MODELS where MMEngine is installed); the adder
ResNets and the head (need MMPretrain, which they subclass). Without
MMPretrain, e.g. in an MMDetection or MMSegmentation environment, the layers
are still registered, so ``conv_cfg=dict(type='Adder')`` works in those
backbones."""
import importlib.util

from .layers import (
    AdderConv2d,
    QATAdderConv2d,
    QuantAdderConv2d,
    count_adder_layers,
)

__all__ = ['AdderConv2d', 'QATAdderConv2d', 'QuantAdderConv2d',
           'count_adder_layers']

_NEED_MMPRETRAIN = ('AdderResNet', 'AdderResNetV1c', 'AdderResNetV1d',
                    'AdderResNet_CIFAR', 'LinearBNClsHead')

if importlib.util.find_spec('mmpretrain') is not None:
    # Re-exported: __all__ gets _NEED_MMPRETRAIN below.
    from .backbones import (  # noqa: F401
        AdderResNet,
        AdderResNet_CIFAR,
        AdderResNetV1c,
        AdderResNetV1d,
    )
    from .heads import LinearBNClsHead  # noqa: F401
    __all__ += list(_NEED_MMPRETRAIN)


def __getattr__(name):
    if name in _NEED_MMPRETRAIN:
        raise ImportError(
            f'adder_mm.models.{name} subclasses MMPretrain, which is not '
            'installed: pip install -r requirements/runtime.txt (mmpretrain '
            '1.2.0). AdderConv2d works without it.')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
