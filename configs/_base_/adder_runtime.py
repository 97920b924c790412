# mmpretrain's runtime (logging, checkpoints every epoch, seed) plus what
# every adder_mm training run relies on:
# - BNRecalibrationHook: BatchNorm statistics recomputed from training
#   images whenever the model is validated, tested or saved after training
#   moved it (adder layers under the adaptive lr outrun BN's running
#   averages; without it a shortened schedule validates at chance);
# - ExactResumeHook: --resume continues bit-identically (random generator
#   states in the checkpoints, data workers seeded per epoch).
_base_ = ['mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['adder_mm'], allow_failed_imports=False)
custom_hooks = [
    dict(type='BNRecalibrationHook', num_samples=1024),
    dict(type='ExactResumeHook'),
]
