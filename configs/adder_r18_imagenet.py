# AdderNet ResNet-18 on ImageNet-1k: mmpretrain's ImageNet pipeline, 150
# epochs cosine, lr 0.1 at 8 GPUs x 32 (auto_scale_lr for other batches).
_base_ = [
    './_base_/models/adder_r18_imagenet.py',
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    './_base_/schedules/imagenet_bs256_cos150e_adder.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['adder_mm'], allow_failed_imports=False)
