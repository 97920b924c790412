# SGD + cosine for the digits ResNet-20s (paper's CIFAR recipe, shortened
# to 30 epochs: at 10 the AdderNet stayed about 0.9 points below its CNN twin):
# lr 0.1 at batch 64, momentum 0.9, weight decay 5e-4, 1 warm-up epoch.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.1,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=30, T_max=29,
         eta_min=0.0),
]
train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=5)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=64)
