from .bn_recalibration_hook import BNRecalibrationHook
from .exact_resume_hook import ExactResumeHook

__all__ = ['BNRecalibrationHook', 'ExactResumeHook']
