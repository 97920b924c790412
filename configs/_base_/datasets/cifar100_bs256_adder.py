# CIFAR-100 with the CIFAR-10 recipe of the paper's code: RandomCrop 32 pad 4
# + horizontal flip, batch 256 on one GPU, and the same normalisation as on
# CIFAR-10 (the paper states one CIFAR setting for both datasets).
_base_ = ['mmpretrain::_base_/datasets/cifar100_bs16.py']

data_preprocessor = dict(
    num_classes=100,
    mean=[125.307, 122.961, 113.8575],
    std=[51.5865, 50.847, 51.255],
    to_rgb=False)

train_dataloader = dict(batch_size=256, num_workers=4)
val_dataloader = dict(batch_size=256, num_workers=4)
test_dataloader = val_dataloader
