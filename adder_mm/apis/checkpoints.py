"""Open a checkpoint with torch's safe loader and say exactly what is wrong
with it: missing, empty, truncated, not a checkpoint, refused by the safe
loader, or not matching the model."""
import copy
import os.path as osp
import pickle
import re

import torch

from adder_mm.utils import URL_PREFIXES, url_cache_path

from .errors import ToolError

# How torch.save's two formats begin: a zip archive, or (legacy format,
# _use_new_zipfile_serialization=False) a pickled magic number.
_ZIP_MAGIC = b'PK\x03\x04'
_LEGACY_MAGIC = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'
# torch's message for a global outside the weights_only allow-list.
_UNSUPPORTED_GLOBAL = re.compile(
    r'Unsupported (?:global|class)[^:]*:\s*(?:GLOBAL\s+)?([\w.]+)')


def read_checkpoint(path, what='checkpoint'):
    """Load ``path`` with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        ToolError: naming the problem (``what`` names the file's role).
    """
    url = str(path)
    if url.startswith(URL_PREFIXES):
        # Downloaded where MMEngine's loader will find it, then checked
        # like a local file.
        path = url_cache_path(url)
        if not osp.exists(path):
            try:
                torch.hub.download_url_to_file(url, path, progress=False)
            except Exception as e:  # noqa: BLE001 (urllib raises many)
                raise ToolError(f'{what} {url!r} could not be downloaded: '
                                f'{type(e).__name__}: {e}') from None
    elif '://' in url:
        return None  # other remote schemes are left to MMEngine's loaders
    if not osp.exists(path):
        raise ToolError(f'{what} not found: {path!r}')
    if osp.isdir(path):
        raise ToolError(f'{what} {path!r} is a folder, not a file')
    size = osp.getsize(path)
    if size == 0:
        raise ToolError(f'{what} {path!r} is empty (0 bytes): the save that '
                        'wrote it did not finish; use an earlier checkpoint')
    with open(path, 'rb') as f:
        head = f.read(len(_LEGACY_MAGIC))
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_MAGIC)):
        kind = ('a plain pickle, not a file written by torch.save'
                if head[:1] == b'\x80' else
                'neither a zip archive nor a legacy torch file')
        raise ToolError(f'{what} {path!r} is not a PyTorch checkpoint ({kind})'
                        '; check that the path names a .pth file saved by '
                        'torch.save')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise ToolError(_unpickling_message(path, what, e)) from None
    except Exception as e:  # noqa: BLE001 (torch raises many kinds here)
        text = str(e).strip().splitlines()
        raise ToolError(
            f'{what} {path!r} is truncated or corrupted ({size} bytes; torch: '
            f'{type(e).__name__}: {text[0] if text else ""}): the save or '
            'the copy did not finish; use an earlier checkpoint or copy it '
            'again') from None
    return ckpt


def _unpickling_message(path, what, err):
    text = str(err)
    m = _UNSUPPORTED_GLOBAL.search(text)
    if m:
        name = m.group(1)
        return (f'{what} {path!r} refers to {name}, which the safe loader '
                '(torch.load weights_only=True) does not allow. If it comes '
                'from a source you trust and you need that object, add the '
                'class to the allow-list in your own code '
                '(torch.serialization.add_safe_globals([...])); otherwise '
                'save only the state_dict of the model and load that')
    if 'weights_only' in text or 'Weights only load failed' in text:
        first = next((ln for ln in text.splitlines()
                      if ln.strip() and 'weights_only' not in ln), text)
        return (f'{what} {path!r} was refused by the safe loader '
                f'(torch.load weights_only=True): {first.strip()}')
    return (f'{what} {path!r} is not a PyTorch checkpoint (the file does not '
            'unpickle: ' + (text.splitlines()[0] if text else 'bad data') +
            '); check that the path names a .pth file saved by torch.save')


def checkpoint_state_dict(ckpt, path, what='checkpoint'):
    """The model weights inside a loaded checkpoint (MMEngine's
    ``state_dict``/``model`` wrappers or a bare state dict)."""
    if not isinstance(ckpt, dict):
        raise ToolError(f'{what} {path!r} holds a {type(ckpt).__name__}, not '
                        'a dict of weights')
    for key in ('state_dict', 'model'):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    tensors = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ToolError(f'{what} {path!r} holds no tensors: it is not a '
                        'checkpoint of model weights')
    return tensors


def _strip_prefix(state):
    if state and all(k.startswith('module.') for k in state):
        return {k[len('module.'):]: v for k, v in state.items()}
    return state


def compare_state_dict(state, model):
    """(missing, unexpected, mismatched shapes) of ``state`` against
    ``model``'s own state dict."""
    own = model.state_dict()
    state = _strip_prefix(state)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs model '
              f'{tuple(own[k].shape)}' for k in own
              if k in state and state[k].shape != own[k].shape]
    return missing, unexpected, shapes


def _qat_grids(state, model, path, what):
    """The grid keys of ``model``'s QATAdderConv2d layers that ``state``
    lacks entirely (a float AdderNet's checkpoint: they load unset and
    QATAdderConv2d's calibration fills them). Raises a ToolError where the
    checkpoint's grids were made for other bits than the model's layers."""
    from adder_mm.models.layers import QATAdderConv2d
    unset = set()
    for name, m in model.named_modules():
        if not isinstance(m, QATAdderConv2d):
            continue
        keys = [f'{name}.{k}' if name else k for k in m.GRID_KEYS]
        if not any(k in state for k in keys):
            unset.update(keys)
        bits = state.get(keys[-1])  # grid_bits
        if isinstance(bits, torch.Tensor) and bits.numel() == 1 and \
                int(bits) != m.bits:
            raise ToolError(
                f'{what} {path!r} holds quantization-aware grids made for '
                f'{int(bits)}-bit integers, but the model\'s QAT layers have '
                f'bits={m.bits} (e.g. {name}): build it with the bits it was '
                f"trained with (conv_cfg=dict(type='QATAdder', "
                f'bits={int(bits)}))')
    return unset


def _listing(title, items, limit=8):
    if not items:
        return ''
    more = f' ... and {len(items) - limit} more' if len(items) > limit else ''
    return f'\n  {title} ({len(items)}): ' + ', '.join(items[:limit]) + more


def check_checkpoint(path, model, strict=True, what='checkpoint',
                     config=None, quantized='refuse', ckpt=None):
    """Read ``path`` safely and compare its weights with ``model``.

    strict: every key and shape must match (testing, resuming). Otherwise
    (``load_from`` for fine-tuning) differences are returned for a warning,
    and only a checkpoint sharing no key with the model is an error.
    quantized: what a quantized checkpoint (tools/quantize.py) does:
    'convert' gives ``model`` its quantized layers first (evaluation),
    'refuse' is an error (training), 'require' makes a float checkpoint
    the error. ckpt: the file's contents when the caller already read it
    (build_runner reads it before building the Runner, so that a bad file
    stops the tool before anything is built).

    Returns:
        (checkpoint dict or None for remote files, differences text).
    Raises:
        ToolError: naming the problem.
    """
    if ckpt is None:
        ckpt = read_checkpoint(path, what)
    if ckpt is None:
        return None, ''
    _model_kind(ckpt, path, what, model, config)
    _quantized_layers(ckpt, path, what, model, quantized)
    state = checkpoint_state_dict(ckpt, path, what)
    missing, unexpected, shapes = compare_state_dict(state, model)
    unset = _qat_grids(_strip_prefix(state), model, path, what)
    if not strict:  # a float AdderNet fine-tuned with QAT: no difference
        missing = [k for k in missing if k not in unset]
    diff = (_listing('missing in the checkpoint', missing) +
            _listing('not in the model', unexpected) +
            _listing('shape differs', shapes))
    own = model.state_dict()
    shared = len(own) - len(missing)
    if (strict and diff) or shared == 0 or shapes and not strict and \
            len(shapes) == shared:
        cfg = f' of {config}' if config else ''
        from adder_mm.models.layers import QATAdderConv2d
        grid = tuple('.' + k for k in QATAdderConv2d.GRID_KEYS)
        if missing and set(missing) <= unset and not unexpected + shapes:
            advice = ("It is a float AdderNet's checkpoint, and the model's "
                      'adder layers are quantization-aware (QATAdder): '
                      'fine-tune it with tools/train.py (load_from), or use '
                      'its float config')
        elif unexpected and all(k.endswith(grid) for k in unexpected) and \
                not missing + shapes:
            advice = ('It is a quantization-aware (QAT) checkpoint: use its '
                      "QAT config (conv_cfg=dict(type='QATAdder', bits=...),"
                      ' e.g. configs/adder_r20_digits_int4_qat.py)')
        else:
            advice = ('Use the config the checkpoint was trained with, or '
                      'convert the checkpoint (tools/model_converters/)')
        raise ToolError(f'{what} {path!r} does not match the model{cfg}:'
                        f'{diff}\n{advice}')
    return ckpt, diff


def _model_kind(ckpt, path, what, model, config):
    """An AdderNet's checkpoint and its CNN twin's have the same keys and
    shapes; the number of adder layers in the checkpoint's meta (written
    by ExactResumeHook and tools/quantize.py) tells them apart."""
    from adder_mm.models.layers import ADDER_LAYERS_KEY, count_adder_layers
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    saved = meta.get(ADDER_LAYERS_KEY) if isinstance(meta, dict) else None
    if not isinstance(saved, int):
        return  # saved without the hook: nothing to compare
    own = count_adder_layers(model)
    if saved != own:
        kind = {True: 'an AdderNet', False: 'a model without adder layers'}
        cfg = config or 'this config'
        raise ToolError(
            f'{what} {path!r} was saved from {kind[saved > 0]} ({saved} adder '
            f'layers), but the model of {cfg} is {kind[own > 0]} ({own}): '
            'use the config the checkpoint was trained with')


def _quantized_layers(ckpt, path, what, model, policy):
    from adder_mm.quantization import CalibrationError
    from adder_mm.quantization.runner import (
        prepare_for_checkpoint,
        quantized_spec,
    )
    spec = quantized_spec(ckpt)
    if spec is None:
        if policy == 'require':
            raise ToolError(
                f'{what} {path!r} is a float checkpoint; this needs a '
                'quantized one (written by tools/quantize.py)')
        return
    if policy == 'refuse':
        raise ToolError(
            f'{what} {path!r} is a quantized checkpoint ({spec.get("bits")}-'
            f'bit, {spec.get("method")}): it can be tested '
            '(tools/test.py) but not trained or quantized again; use the '
            'float checkpoint it was made from')
    try:
        prepare_for_checkpoint(model, ckpt)
    except (CalibrationError, KeyError, TypeError) as e:
        raise ToolError(f'{what} {path!r}: {e}') from None


def _stand_in_step(optimizer_cfg, scope, saved=None):
    """Build the optimizer ``optimizer_cfg`` on one stand-in parameter,
    load ``saved`` ({'state': {0: ...}, 'param_groups': [...]}) into it if
    given, and take a step, as a resumed run's first step would. Returns
    None, or the exception that step raised."""
    from .cfg_options import _registered_class
    args = dict(optimizer_cfg)
    cls = _registered_class(args.pop('type', None), scope)
    shapes = [v.shape for v in (saved or {}).get('state', {}).get(0, {})
              .values() if torch.is_tensor(v) and v.dim()]
    param = torch.zeros(shapes[0] if shapes else (2, ), requires_grad=True)
    try:
        optimizer = cls([param], **args)
        if saved is not None:
            optimizer.load_state_dict(saved)
        param.grad = torch.ones_like(param)
        optimizer.step()
    except Exception as e:  # noqa: BLE001 (reported by the caller)
        return e
    return None


def check_optimizer_state(ckpt, cfg, path, what='--resume checkpoint'):
    """Raise ToolError when the config's optimizer cannot continue from
    ``ckpt``'s optimizer state: one parameter's saved state and group are
    loaded into the config's optimizer on a stand-in parameter and
    stepped. A state saved by another optimizer type failed at the first
    step after resuming, inside torch (SGD's state resumed by Adam:
    ``KeyError: 'step'``; Adam's by SGD: ``KeyError: 'momentum'``).
    Checkpoints without optimizer state, with several optimizers, or an
    optimizer that cannot step this way (one that needs a closure) are not
    checked."""
    saved = (ckpt or {}).get('optimizer')
    optimizer_cfg = cfg.get('optim_wrapper', {}).get('optimizer')
    if not isinstance(saved, dict) or not isinstance(
            saved.get('state'), dict) or not isinstance(
                saved.get('param_groups'), list) or not isinstance(
                    optimizer_cfg, dict):
        return
    scope = cfg.get('default_scope', None)
    if _stand_in_step(optimizer_cfg, scope) is not None:
        return  # cannot be checked this way
    # The first parameter with state (else the first), with its group.
    ids = [i for g in saved['param_groups'] if isinstance(g, dict)
           for i in g.get('params', [])]
    ids = [i for i in ids if saved['state'].get(i)] + ids
    if not ids:
        return
    group = next(g for g in saved['param_groups'] if ids[0] in g['params'])
    # A copy: loading keeps the tensors and the step updates them in place.
    one = copy.deepcopy({
        'state': {0: saved['state'][ids[0]]} if ids[0] in saved['state']
        else {}, 'param_groups': [dict(group, params=[0])]})
    error = _stand_in_step(optimizer_cfg, scope, one)
    if error is None:
        return
    name = optimizer_cfg.get('type')
    name = getattr(name, '__name__', name)
    keys = ', '.join(sorted(one['state'].get(0, {}))) or 'nothing'
    raise ToolError(
        f'{what} {path!r}: the config\'s {name} cannot continue from its '
        f'optimizer state (per parameter: {keys}): {type(error).__name__}: '
        f'{error}. The checkpoint was saved by another optimizer. Resume '
        'with the optimizer the run was trained with, or start a new run '
        f'from its weights: --cfg-options load_from={path} without --resume')
