"""Quantization from config files: calibration data from a config, the
quantized checkpoint format, and PyTorch's own INT8 post-training
quantization of a CNN (torch.ao) as the reference point."""
import copy

import torch

from adder_mm.models.layers import ADDER_LAYERS_KEY, count_adder_layers
from adder_mm.utils.checkpoint import save_atomic

from .ptq import CalibrationError, convert_structure

CHECKPOINT_KEY = 'quantization'


def calibration_loader(cfg, seed=0):
    """A loader of the config's training images through its *test*
    pipeline (no random augmentation), shuffled with ``seed``: the
    calibration data of post-training quantization."""
    from mmengine.runner import Runner
    train = copy.deepcopy(cfg.get('train_dataloader') or {})
    test = cfg.get('test_dataloader') or cfg.get('val_dataloader') or {}
    if not train or 'dataset' not in train:
        raise CalibrationError(
            'quantize: the config has no train_dataloader, whose images '
            'calibrate the quantization')
    pipeline = (test.get('dataset') or {}).get('pipeline')
    node = train['dataset']
    while 'pipeline' not in node and isinstance(node.get('dataset'), dict):
        node = node['dataset']  # wrappers (RepeatDataset, ...)
    if pipeline is not None:
        node['pipeline'] = copy.deepcopy(pipeline)
    train['sampler'] = dict(type='DefaultSampler', shuffle=True, seed=seed)
    train['persistent_workers'] = False
    return Runner.build_dataloader(train, seed=seed)


def quantized_spec(checkpoint):
    """The quantization spec of a loaded checkpoint, or None (float)."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return meta.get(CHECKPOINT_KEY) if isinstance(meta, dict) else None


def prepare_for_checkpoint(model, checkpoint):
    """Give ``model`` the quantized layers a quantized checkpoint holds (a
    float checkpoint leaves it as it is); returns the spec or None."""
    spec = quantized_spec(checkpoint)
    if spec is not None:
        convert_structure(model, spec)
    return spec


def load_quantized_checkpoint(model, filename, map_location='cpu',
                              strict=True):
    """Load a checkpoint of tools/quantize.py into the float model of its
    config: the adder layers it names become QuantAdderConv2d first (a
    float checkpoint loads as it is). MMPretrain's ``init_model(config,
    checkpoint)`` cannot do that step; use ``init_model(config)`` and then
    this.

    Returns:
        dict: the checkpoint (``meta['quantization']`` is its spec).
    """
    from mmengine.runner import CheckpointLoader, load_state_dict
    checkpoint = CheckpointLoader.load_checkpoint(filename, map_location)
    prepare_for_checkpoint(model, checkpoint)
    state = checkpoint.get('state_dict', checkpoint)
    load_state_dict(model, state, strict=strict)
    return checkpoint


def save_quantized(model, spec, path, extra_meta=None):
    """Write the quantized model's state dict with its spec, atomically
    (a temporary file renamed into place: nothing half-written)."""
    meta = {CHECKPOINT_KEY: spec, ADDER_LAYERS_KEY: count_adder_layers(model),
            **(extra_meta or {})}
    save_atomic({'meta': meta, 'state_dict': model.state_dict()}, path)


@torch.no_grad()
def torch_ao_quantize_backbone(model, batches, num_batches):
    """PyTorch's INT8 post-training quantization (torch.ao FX graph mode,
    x86 engine: per-channel weights, per-tensor uint8 activations) of
    ``model.backbone``, in place; neck and head stay float, as the adder
    layers' neighbours do in adder_mm's quantization. Calibrates on
    ``num_batches`` of ``batches`` (MMEngine data batches)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from adder_mm.models.layers import AdderConv2d
    if any(isinstance(m, AdderConv2d) for m in model.modules()):
        raise CalibrationError(
            "quantize: method 'torch-ao' is PyTorch's INT8 quantization of "
            'multiplication convs; this model has adder layers (use shared '
            'or grouped)')
    torch.backends.quantized.engine = 'x86'
    model.eval()
    data = [model.data_preprocessor(b, False)['inputs']
            for _, b in zip(range(num_batches), batches)]
    if not data:
        raise CalibrationError('quantize: the calibration data loader '
                               'yielded no batch')
    prepared = prepare_fx(model.backbone.eval(),
                          get_default_qconfig_mapping('x86'), (data[0], ))
    for x in data:
        prepared(x)
    model.backbone = convert_fx(prepared)
    return dict(bits=8, method='torch-ao', engine='x86',
                calib_batches=len(data))
