# AdderNet ResNet-50 on ImageNet-1k: mmpretrain's ImageNet pipeline, 150
# epochs cosine, lr 0.1 at 8 GPUs x 32 (auto_scale_lr for other batches).
_base_ = [
    './_base_/models/adder_r50_imagenet.py',
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    './_base_/schedules/imagenet_bs256_cos150e_adder.py',
    './_base_/adder_runtime.py',
]

# BN statistics from 8192 training images per validation/checkpoint (about
# 0.2% of an ImageNet epoch's work); the hooks of ./_base_/adder_runtime.py.
custom_hooks = [
    dict(type='BNRecalibrationHook', num_samples=8192),
    dict(type='ExactResumeHook'),
]
