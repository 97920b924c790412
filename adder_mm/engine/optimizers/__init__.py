from .adder_grad_normalizer import AdderGradNormalizer
from .adder_optim_constructor import AdderOptimWrapperConstructor

__all__ = ['AdderGradNormalizer', 'AdderOptimWrapperConstructor']
