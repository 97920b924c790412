# The paper's ImageNet recipe (authors' answer, no script released): SGD lr
# 0.1 at total batch 256 (8 GPUs x 32), momentum 0.9, weight decay 1e-4,
# cosine decay over 150 epochs (per epoch, to 0); adaptive lr (paper Eq. 13)
# with eta 0.2 on the adder weights.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
    constructor='AdderOptimWrapperConstructor',
    paramwise_cfg=dict(adder_eta=0.2))

param_scheduler = dict(
    type='CosineAnnealingLR',
    T_max=150,
    eta_min=0.,
    by_epoch=True,
    begin=0,
    end=150)

train_cfg = dict(by_epoch=True, max_epochs=150, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# lr 0.1 is for a total batch of 256; with --auto-scale-lr MMEngine scales it
# linearly to the actual total batch (GPUs x samples per GPU).
auto_scale_lr = dict(base_batch_size=256)
