from .adder_conv import AdderConv2d

__all__ = ['AdderConv2d']
