from .backbones import (AdderResNet, AdderResNet_CIFAR, AdderResNetV1c,
                        AdderResNetV1d)
from .heads import LinearBNClsHead
from .layers import AdderConv2d

__all__ = [
    'AdderConv2d', 'AdderResNet', 'AdderResNetV1c', 'AdderResNetV1d',
    'AdderResNet_CIFAR', 'LinearBNClsHead'
]
