"""Registration into MMEngine's registries where MMEngine is installed: the
layers themselves need torch alone."""
import importlib.util

HAS_MMENGINE = importlib.util.find_spec('mmengine') is not None


def register_model(*names):
    """Class decorator: register the class into MMEngine's root MODELS under
    its own name and ``names`` when MMEngine is installed (so
    ``conv_cfg=dict(type=...)`` finds it); without MMEngine, a no-op."""

    def wrap(cls):
        if HAS_MMENGINE:
            from mmengine.registry import MODELS
            for name in (cls.__name__, ) + names:
                MODELS.register_module(name, module=cls)
        return cls

    return wrap
