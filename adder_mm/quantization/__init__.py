"""Quantization of AdderNets (integer adder layers): post-training, and
conversion after quantization-aware training."""
from .ptq import (
                  METHODS,
                  CalibrationError,
                  adder_layers,
                  calibrate,
                  calibrate_qat,
                  conversion_bits,
                  convert_structure,
                  quantize_model,
)
from .runner import load_quantized_checkpoint

__all__ = [
    'METHODS', 'CalibrationError', 'adder_layers', 'calibrate',
    'calibrate_qat', 'conversion_bits',
    'convert_structure', 'load_quantized_checkpoint', 'quantize_model'
]
