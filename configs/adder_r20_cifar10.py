# AdderNet ResNet-20 on CIFAR-10, the paper's CIFAR recipe (400 epochs,
# batch 256 on 1 GPU).  python tools/train.py configs/adder_r20_cifar10.py
_base_ = [
    './_base_/models/adder_r20_cifar.py',
    './_base_/datasets/cifar10_bs256_adder.py',
    './_base_/schedules/cifar_bs256_cos400e_adder.py',
    './_base_/adder_runtime.py',
]

default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook', interval=1, max_keep_ckpts=2, save_best='auto'))
