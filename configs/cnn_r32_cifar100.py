# The CNN twin of adder_r32_cifar100.py: identical except that the
# backbone's block and shortcut convs multiply (nn.Conv2d).
_base_ = ['./adder_r32_cifar100.py']

model = dict(backbone=dict(conv_cfg=None))
