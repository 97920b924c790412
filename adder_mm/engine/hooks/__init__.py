from .bn_recalibration_hook import BNRecalibrationHook
from .exact_resume_hook import ExactResumeHook
from .qat_calibration_hook import QATCalibrationHook

__all__ = ['BNRecalibrationHook', 'ExactResumeHook', 'QATCalibrationHook']
