# The paper's ImageNet ResNet-50 (torchvision layout: stride on the 3x3 conv
# of the Bottleneck), adder block and shortcut convs, ordinary stem conv,
# classifier = linear with bias + BatchNorm on the logits.
_base_ = ['./adder_r18_imagenet.py']

model = dict(backbone=dict(depth=50), head=dict(in_channels=2048))
