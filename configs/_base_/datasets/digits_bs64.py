# scikit-learn's bundled handwritten digits (adder_mm SklearnDigits): 1,438
# train / 359 test images, 8x8 gray upsampled to 32x32 (bilinear), 3 channels.
# No download and no data_root: the data ships inside scikit-learn.
dataset_type = 'SklearnDigits'
data_preprocessor = dict(
    num_classes=10,
    # Mean/std of the 0..255-scaled digits; the gray level is repeated on
    # 3 channels, so there is no channel order to convert.
    mean=[77.8, 77.8, 77.8],
    std=[95.9, 95.9, 95.9],
    to_rgb=False)

train_pipeline = [
    dict(type='Resize', scale=(32, 32), interpolation='bilinear'),
    # +-1 original pixel of shift. No flips: a mirrored digit is another
    # symbol (or none).
    dict(type='RandomCrop', crop_size=32, padding=4),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='Resize', scale=(32, 32), interpolation='bilinear'),
    dict(type='PackInputs'),
]

# The in-memory 8x8 images need no loader processes; workers would only add
# start-up time and fork memory on a small CPU machine.
train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(type=dataset_type, split='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(type=dataset_type, split='test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, ))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
