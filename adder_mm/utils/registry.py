"""Registration into MMEngine's registries where MMEngine is installed: the
layers themselves need torch alone."""
import importlib.util
import os.path as osp

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


# The source tree's model zoo (the README installs adder_mm editable, so
# the configs sit next to the package).
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METAFILE = osp.join(REPO_ROOT, 'configs', 'metafile.yml')
_zoo_registered = False


def register_model_zoo(metafile=METAFILE):
    """Make the models of configs/metafile.yml known to MMPretrain by name
    (``get_model('adder_r20_digits')``, ``list_models('adder*')``,
    ``inference_model``), with their configs. Called by ``import
    adder_mm`` where MMPretrain and the configs are at hand (a source
    checkout); returns whether it registered them."""
    global _zoo_registered
    if _zoo_registered or not osp.isfile(metafile):
        return False
    from mmpretrain.apis.model import ModelHub
    ModelHub.register_model_index(metafile, config_prefix=REPO_ROOT)
    _zoo_registered = True
    return True
