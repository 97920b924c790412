# CIFAR-10 as in the paper's code: RandomCrop 32 with 4 px zero padding and
# horizontal flip (mmpretrain's CIFAR pipeline), batch 256 on one GPU.
_base_ = ['mmpretrain::_base_/datasets/cifar10_bs16.py']

# The paper's mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010)
# times 255: mmpretrain's data_preprocessor works on 0-255 pixels. CIFAR
# images come out of the dataset as RGB already.
data_preprocessor = dict(
    num_classes=10,
    mean=[125.307, 122.961, 113.8575],
    std=[51.5865, 50.847, 51.255],
    to_rgb=False)

train_dataloader = dict(batch_size=256, num_workers=4)
val_dataloader = dict(batch_size=256, num_workers=4)
test_dataloader = val_dataloader
