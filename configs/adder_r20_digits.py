# AdderNet ResNet-20 on scikit-learn's bundled digits: trains on a CPU in
# minutes with no download.  python tools/train.py configs/adder_r20_digits.py
# Measured (seed 0, idle 2-core AMD EPYC, torch 2.14.1 CPU; README, Results):
# 98.89% top-1 (355/359 test digits) in 111-116 s; CNN twin 98.89% (355/359)
# in 60-72 s. Deterministic: two runs gave the same accuracy.
_base_ = [
    './_base_/datasets/digits_bs64.py',
    './_base_/schedules/digits_cosine.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['adder_mm'], allow_failed_imports=False)

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
    checkpoint=dict(type='CheckpointHook', interval=2, max_keep_ckpts=2))
# At lr 0.1 the adder outputs move faster than BN's running averages
# (momentum 0.1) follow, and validating with those stale statistics gives
# chance-level accuracy until the cosine lr has decayed. Recomputing the
# statistics with the current weights before each validation fixes it
# (16 forward batches, about 5% of the run).
custom_hooks = [
    dict(
        type='PreciseBNHook',
        num_samples=1024,
        interval=2,
        priority='ABOVE_NORMAL')
]
randomness = dict(seed=0, deterministic=False)
