# The CNN twin of adder_r18_imagenet.py: identical except that the
# backbone's block and shortcut convs multiply (nn.Conv2d).
_base_ = ['./adder_r18_imagenet.py']

model = dict(backbone=dict(conv_cfg=None))
