"""Post-training quantization of AdderNets (integer adder layers)."""
from .ptq import (
                  METHODS,
                  CalibrationError,
                  adder_layers,
                  calibrate,
                  convert_structure,
                  quantize_model,
)
from .runner import load_quantized_checkpoint

__all__ = [
    'METHODS', 'CalibrationError', 'adder_layers', 'calibrate',
    'convert_structure', 'load_quantized_checkpoint', 'quantize_model'
]
