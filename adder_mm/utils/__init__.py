from .checkpoint import (
    checkpoint_safe_globals,
    register_checkpoint_safe_globals,
    save_atomic,
)
from .fileio import write_atomic

__all__ = ['checkpoint_safe_globals', 'register_checkpoint_safe_globals',
           'save_atomic', 'write_atomic']
