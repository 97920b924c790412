"""Post-training quantization of AdderNets (integer adder layers)."""
from .ptq import (
                  METHODS,
                  CalibrationError,
                  adder_layers,
                  calibrate,
                  convert_structure,
                  quantize_model,
)

__all__ = [
    'METHODS', 'CalibrationError', 'adder_layers', 'calibrate',
    'convert_structure', 'quantize_model'
]
