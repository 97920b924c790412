"""adder_mm.ops: the adder ops and their compiled kernels (torch only)."""
from .adder2d import adder2d, adder2d_reference
from .adder2d_int8 import (
    adder2d_int8,
    adder2d_int8_reference,
    fake_quantize_to_grid,
    quantize_to_grid,
    quantize_to_grid_reference,
)
from .ext_loader import ext_info, machine_cpu_isa, set_cpu_isa
from .reference import Adder2dFunction

__all__ = [
    'adder2d', 'adder2d_reference', 'Adder2dFunction', 'adder2d_int8',
    'adder2d_int8_reference', 'ext_info', 'fake_quantize_to_grid',
    'machine_cpu_isa',
    'quantize_to_grid', 'quantize_to_grid_reference', 'set_cpu_isa'
]
