"""Loads the compiled extension ``adder_mm._ext`` (torch only).

When the extension is missing (an install with ``ADDER_MM_WITH_OPS=0`` or a
build the user skipped), ``load_ext`` returns None and warns once; the ops then
fall back to the pure-PyTorch reference.
"""
import importlib
import warnings

_EXT = None
_TRIED = False
_ERROR = None


def load_ext():
    """Return the ``adder_mm._ext`` module, or None when it is not built."""
    global _EXT, _TRIED, _ERROR
    if not _TRIED:
        _TRIED = True
        try:
            _EXT = importlib.import_module('adder_mm._ext')
        except ImportError as e:  # not built, or built against another torch
            _ERROR = e
            warnings.warn(
                'adder_mm: compiled ops (adder_mm._ext) are not available, '
                'falling back to the pure-PyTorch reference adder2d, which is '
                'much slower and uses more memory. Build them with '
                '`pip install --no-build-isolation -e .` (see README, '
                f'Installation). Import error: {e}',
                RuntimeWarning,
                stacklevel=2)
    return _EXT


def ext_info():
    """Which compiled kernels are available.

    Returns:
        dict: ``{'cpu': bool, 'cuda': bool, 'cpu_threads': int,
        'error': str or None}``; ``cpu_threads`` is how many threads the CPU
        kernels run on now (it follows ``torch.set_num_threads``; 0 without
        the extension).
    """
    ext = load_ext()
    return {
        'cpu': ext is not None,
        'cuda': bool(ext is not None and ext.with_cuda()),
        'cpu_threads': int(ext.cpu_threads()) if ext is not None else 0,
        'error': None if _ERROR is None else str(_ERROR),
    }
