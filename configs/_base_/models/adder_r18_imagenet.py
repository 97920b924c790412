# ResNet-18 for ImageNet: ordinary 7x7 stem conv and maxpool, adder block and
# 1x1 shortcut convs (each followed by BN), global average pooling, then a
# linear classifier with bias + BatchNorm on the logits (paper's ResNet-50
# head, used for ResNet-18 as well).
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='AdderResNet',
        depth=18,
        num_stages=4,
        out_indices=(3, ),
        style='pytorch',
        conv_cfg=dict(type='Adder'),
        stem_conv_cfg=None,
        zero_init_residual=False),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearBNClsHead',
        num_classes=1000,
        in_channels=512,
        bias=True,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)),
)
