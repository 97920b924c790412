# The paper's CIFAR recipe: SGD lr 0.1, momentum 0.9, weight decay 5e-4 on
# every parameter, 400 epochs, lr set once per epoch to
# 0.05 * (1 + cos(pi * epoch / 400)), batch 256 on one GPU; adaptive lr
# (paper Eq. 13) with eta 0.2 on the adder weights.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4),
    constructor='AdderOptimWrapperConstructor',
    paramwise_cfg=dict(adder_eta=0.2))

param_scheduler = dict(
    type='CosineAnnealingLR',
    T_max=400,
    eta_min=0.,
    by_epoch=True,
    begin=0,
    end=400)

train_cfg = dict(by_epoch=True, max_epochs=400, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# lr 0.1 is for a total batch of 256; with --auto-scale-lr MMEngine scales it
# linearly to other total batch sizes.
auto_scale_lr = dict(base_batch_size=256)
