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
        'cpu_isa': str, 'error': str or None}``; ``cpu_threads`` is how many
        threads the CPU kernels run on now (it follows
        ``torch.set_num_threads``; 0 without the extension); ``cpu_isa`` the
        instruction-set level they use ('avx512', 'avx2' or 'generic'; None
        without the extension), see :func:`set_cpu_isa`.
    """
    ext = load_ext()
    return {
        'cpu': ext is not None,
        'cuda': bool(ext is not None and ext.with_cuda()),
        'cpu_threads': int(ext.cpu_threads()) if ext is not None else 0,
        'cpu_isa': ext.cpu_isa() if ext is not None else None,
        'error': None if _ERROR is None else str(_ERROR),
    }


CPU_ISAS = ('generic', 'avx2', 'avx512')


def set_cpu_isa(name):
    """Cap the CPU kernels' instruction-set level; returns the previous one.

    ``name`` is 'generic' (portable C++), 'avx2' (AVX2+FMA) or 'avx512'
    (AVX-512 F/BW/DQ/VL); a level above what the CPU supports is clamped to
    it, so ``set_cpu_isa('avx512')`` restores the best level. The
    environment variable ``ADDER_MM_CPU_ISA`` sets the same cap at start-up.
    For tests and A/B benchmarks: every level gives results that agree with
    the reference, not necessarily bit for bit with each other.
    """
    if name not in CPU_ISAS:
        raise ValueError(f'set_cpu_isa: unknown level {name!r}; use one of '
                         f'{CPU_ISAS}')
    ext = load_ext()
    if ext is None:
        raise RuntimeError('set_cpu_isa: adder_mm._ext is not built, so '
                           'there are no CPU kernels to configure')
    return ext.set_cpu_isa(name)


def machine_cpu_isa():
    """The best CPU kernel level this machine supports (None without the
    extension)."""
    ext = load_ext()
    return ext.machine_cpu_isa() if ext is not None else None
