# The paper's CIFAR ResNet-20: ordinary 3x3 stem conv, adder block and 1x1
# shortcut convs (each followed by BN), global average pooling, then the
# paper's classifier (linear without bias + BatchNorm on the logits).
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='AdderResNet_CIFAR',
        depth=20,
        conv_cfg=dict(type='Adder'),
        stem_conv_cfg=None,
        # The paper's code starts every BN at weight 1.
        zero_init_residual=False),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearBNClsHead',
        num_classes=10,
        in_channels=64,
        bias=False,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )),
)
