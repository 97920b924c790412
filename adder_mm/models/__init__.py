from .layers import AdderConv2d

__all__ = ['AdderConv2d']
