# The CNN twin of adder_r20_digits.py: identical except that the block and
# shortcut convs multiply (nn.Conv2d).
_base_ = ['./adder_r20_digits.py']

model = dict(backbone=dict(conv_cfg=None))
