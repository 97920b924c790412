# AdderNet ResNet-20 on scikit-learn's bundled digits: trains on a CPU in
# minutes with no download.  python tools/train.py configs/adder_r20_digits.py
_base_ = [
    './_base_/datasets/digits_bs64.py',
    './_base_/schedules/digits_cosine.py',
    './_base_/adder_runtime.py',
]

model = dict(
    type='ImageClassifier',
    # Adder block and shortcut convs; stem conv and classifier stay
    # multiplication-based, as in the paper.
    backbone=dict(
        type='AdderResNet_CIFAR', depth=20, conv_cfg=dict(type='Adder')),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearBNClsHead',
        num_classes=10,
        in_channels=64,
        bias=False,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )),
)

# The paper's adaptive lr (Eq. 13) on the adder weights, eta = 0.2.
optim_wrapper = dict(
    constructor='AdderOptimWrapperConstructor',
    paramwise_cfg=dict(adder_eta=0.2))

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=5, max_keep_ckpts=2))
randomness = dict(seed=0, deterministic=False)
