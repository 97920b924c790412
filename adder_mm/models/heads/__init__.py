from .linear_bn_head import LinearBNClsHead

__all__ = ['LinearBNClsHead']
