"""adder_mm: AdderNets (Chen et al., CVPR 2020) for OpenMMLab.

``adder_mm.ops`` needs torch alone. When MMEngine is installed, importing
adder_mm also registers AdderConv2d and the optimizer constructor into the
OpenMMLab registries and allow-lists MMEngine's checkpoint classes for
``torch.load(weights_only=True)``; with MMPretrain also installed, the adder
ResNets, the head and the digits dataset as well, and the configs' models
by name for MMPretrain's ``get_model`` (from a source checkout).
"""
import importlib.util

from .version import __version__

__all__ = ['__version__']

if importlib.util.find_spec('mmengine') is not None:
    import warnings

    # Two warnings every tool would print on the supported stack: mmcv-lite
    # (the README's install) has no compiled ops, which mmcv's transformer
    # module reports on import although nothing here uses them; mmengine
    # imports pkg_resources, which setuptools marks deprecated. Only these
    # two messages are filtered.
    warnings.filterwarnings(
        'ignore', message='Fail to import ``MultiScaleDeformableAttention``',
        category=UserWarning)
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                            category=UserWarning)
    from .utils import (
        register_atomic_local_backend,
        register_checkpoint_safe_globals,
        register_safe_url_loader,
    )
    register_checkpoint_safe_globals()
    register_safe_url_loader()
    register_atomic_local_backend()
    from . import engine, models  # noqa: F401,E402  (registration)
    __all__ += ['engine', 'models']
    if importlib.util.find_spec('mmpretrain') is not None:
        from . import datasets  # noqa: F401,E402
        __all__ += ['datasets']
        from .utils.registry import register_model_zoo
        try:
            register_model_zoo()
        except Exception as e:  # a damaged metafile must not stop imports
            warnings.warn('adder_mm: the models of configs/metafile.yml are '
                          'not registered with MMPretrain (get_model by '
                          f'name): {type(e).__name__}: {e}')
