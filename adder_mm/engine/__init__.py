"""Training-engine parts registered into MMEngine's root registries."""
from .optimizers import AdderGradNormalizer, AdderOptimWrapperConstructor

__all__ = ['AdderGradNormalizer', 'AdderOptimWrapperConstructor']
