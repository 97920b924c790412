"""adder_mm.ops: the adder2d op and its compiled kernels (depends on torch only)."""
from .adder2d import adder2d, adder2d_reference
from .adder2d_int8 import adder2d_int8, adder2d_int8_reference
from .reference import Adder2dFunction
from .ext_loader import ext_info, machine_cpu_isa, set_cpu_isa

__all__ = [
    'adder2d', 'adder2d_reference', 'Adder2dFunction', 'adder2d_int8',
    'adder2d_int8_reference', 'ext_info', 'machine_cpu_isa', 'set_cpu_isa'
]
