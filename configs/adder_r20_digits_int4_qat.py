# Quantization-aware training of the digits AdderNet for 4-bit integers:
# fine-tunes the float model of configs/adder_r20_digits.py (train it first)
# with every adder layer's weights and input snapped to one 4-bit grid per
# layer, then tools/quantize.py converts it to integer layers on that grid:
#   python tools/train.py configs/adder_r20_digits_int4_qat.py
#   python tools/quantize.py configs/adder_r20_digits_int4_qat.py \
#       work_dirs/adder_r20_digits_int4_qat/epoch_10.pth --out q4.pth
_base_ = './adder_r20_digits.py'

model = dict(backbone=dict(conv_cfg=dict(type='QATAdder', bits=4)))
load_from = 'work_dirs/adder_r20_digits/epoch_30.pth'

# A tenth of the float recipe's lr, cosine to 0 over 10 epochs.
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=10, T_max=10,
         eta_min=0.0),
]
train_cfg = dict(by_epoch=True, max_epochs=10, val_interval=5)

# The grids from 8 batches of training images before the first step.
custom_hooks = [
    dict(type='QATCalibrationHook', num_batches=8),
    dict(type='BNRecalibrationHook', num_samples=1024),
    dict(type='ExactResumeHook'),
]
