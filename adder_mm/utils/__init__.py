from .checkpoint import (
    URL_PREFIXES,
    checkpoint_safe_globals,
    register_checkpoint_safe_globals,
    register_safe_url_loader,
    save_atomic,
    url_cache_path,
)
from .fileio import (
    register_atomic_local_backend,
    write_atomic,
    write_text_atomic,
)

__all__ = ['URL_PREFIXES', 'checkpoint_safe_globals',
           'register_checkpoint_safe_globals', 'register_safe_url_loader',
           'register_atomic_local_backend', 'save_atomic', 'url_cache_path',
           'write_atomic', 'write_text_atomic']
