# The paper's CIFAR ResNet-32: ResNet-20 with 5 blocks per stage.
_base_ = ['./adder_r20_cifar.py']

model = dict(backbone=dict(depth=32))
