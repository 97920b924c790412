from .adder_resnet import AdderResNet, AdderResNetV1c, AdderResNetV1d
from .adder_resnet_cifar import AdderResNet_CIFAR

__all__ = [
    'AdderResNet', 'AdderResNetV1c', 'AdderResNetV1d', 'AdderResNet_CIFAR'
]
