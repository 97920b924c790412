from .adder_conv import AdderConv2d
from .quant_adder_conv import QuantAdderConv2d

__all__ = ['AdderConv2d', 'QuantAdderConv2d']
