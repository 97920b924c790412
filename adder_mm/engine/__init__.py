"""Training-engine parts registered into MMEngine's root registries."""
from .hooks import BNRecalibrationHook, ExactResumeHook, QATCalibrationHook
from .optimizers import AdderGradNormalizer, AdderOptimWrapperConstructor

__all__ = [
    'AdderGradNormalizer', 'AdderOptimWrapperConstructor',
    'BNRecalibrationHook', 'ExactResumeHook', 'QATCalibrationHook'
]
