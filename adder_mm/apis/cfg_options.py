"""``--cfg-options`` checked against the loaded config before anything is
built: a misspelt key is an error naming the closest existing one, instead
of a TypeError after 300 lines of config, or a silent no-op."""
import difflib
import inspect

from .errors import ToolError

LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')

NEW_KEY_PREFIX = '+'


def cfg_options_action():
    """The argparse action of ``--cfg-options``: MMEngine's DictAction, but
    an entry without ``=`` or with unbalanced brackets is a usage error
    naming it (DictAction raises a bare ValueError or AssertionError)."""
    from mmengine.config import DictAction

    class CfgOptionsAction(DictAction):

        def __call__(self, parser, namespace, values, option_string=None):
            for kv in values if isinstance(values, list) else [values]:
                if '=' not in kv:
                    parser.error(
                        f'{option_string} {kv}: expected key=value (e.g. '
                        'train_cfg.max_epochs=3; +key=value adds a new key)')
                try:
                    super().__call__(parser, namespace, [kv], option_string)
                except (AssertionError, ValueError, RecursionError) as e:
                    # RecursionError: brackets of two kinds that cross.
                    why = 'mismatched brackets' if isinstance(
                        e, RecursionError) else e
                    parser.error(
                        f'{option_string} {kv}: {why} (MMEngine reads a '
                        'value with a comma as a list or tuple: brackets '
                        'must pair up)')

    return CfgOptionsAction


def _is_mapping(node):
    # dict, ConfigDict, and mmengine's Config (not a dict subclass)
    return isinstance(node, dict) or (hasattr(node, 'keys')
                                      and hasattr(node, '__getitem__'))


def _registered_class(type_name, scope):
    """The class a config's ``type`` names, looked up in MMEngine's root
    registries and their children (``scope`` first); None if unknown."""
    if not isinstance(type_name, str):
        return type_name if inspect.isclass(type_name) else None
    from mmengine import registry as reg
    roots = [getattr(reg, name) for name in dir(reg)
             if isinstance(getattr(reg, name), reg.Registry)]
    names = [type_name] if '.' in type_name else [
        f'{s}.{type_name}' for s in (scope, 'mmengine') if s] + [type_name]
    for root in roots:
        for name in names:
            try:
                cls = root.get(name)
            except Exception:  # noqa: BLE001 (a scope the root lacks)
                cls = None
            if cls is not None:
                return cls
    return None


def _loop_class(cfg, field):
    """train_cfg/val_cfg/test_cfg without a ``type`` are MMEngine loops."""
    from mmengine.runner import (
        EpochBasedTrainLoop,
        IterBasedTrainLoop,
        TestLoop,
        ValLoop,
    )
    node = cfg.get(field) or {}
    if field == 'train_cfg':
        return EpochBasedTrainLoop if node.get('by_epoch', True) else \
            IterBasedTrainLoop
    return ValLoop if field == 'val_cfg' else TestLoop


# Top-level keys read outside Runner.__init__: by Runner.from_cfg/wrap_model/
# train (model_wrapper_cfg, compile), MMEngine's Config (custom_imports),
# MMPretrain's test-time augmentation (tta_model, tta_pipeline), and
# find_unused_parameters (MMEngine's DDP wrapper, prepare_cpu_distributed).
ROOT_EXTRA_KEYS = {'runner_type', 'model_wrapper_cfg', 'compile',
                   'custom_imports', 'tta_model', 'tta_pipeline',
                   'find_unused_parameters'}
# Keys Runner.build_dataloader takes out of a dataloader dict before the
# rest goes to torch's DataLoader.
LOADER_EXTRA_KEYS = {'dataset', 'sampler', 'batch_sampler', 'collate_fn',
                     'worker_init_fn', 'num_batch_per_epoch',
                     'disable_subprocess_warning'}
# Keys Runner.setup_env reads from env_cfg, and auto_scale_lr's.
ENV_KEYS = {'cudnn_benchmark', 'mp_cfg', 'dist_cfg', 'resource_limit'}
AUTO_SCALE_LR_KEYS = {'enable', 'base_batch_size'}


def _paramwise_schema(cfg, path, scope):
    """The keys under optim_wrapper.paramwise_cfg (``path`` below it) that
    the config's constructor reads: its ``paramwise_keys`` and
    ``custom_key_options`` if it names them, MMEngine's default
    constructor's; any other constructor is not checked."""
    from mmengine.optim import DefaultOptimWrapperConstructor

    from adder_mm.engine.optimizers.adder_optim_constructor import (
        PARENT_CUSTOM_KEY_OPTIONS,
        PARENT_PARAMWISE_KEYS,
    )
    optim_wrapper = cfg.get('optim_wrapper', None) or {}
    cls = _registered_class(
        optim_wrapper.get('constructor', 'DefaultOptimWrapperConstructor'),
        scope)
    if hasattr(cls, 'paramwise_keys'):
        keys, options = cls.paramwise_keys, cls.custom_key_options
    elif cls is DefaultOptimWrapperConstructor:
        keys, options = PARENT_PARAMWISE_KEYS, PARENT_CUSTOM_KEY_OPTIONS
    else:
        return set(), True
    if len(path) == 2:
        return set(keys), False
    if path[2] == 'custom_keys' and len(path) <= 4:
        # custom_keys.<any parameter-name part>.<option>: the constructor's
        # options, and any argument of the optimizer (MMEngine copies every
        # key of an entry into the parameter group: lr, momentum, ...).
        if len(path) == 3:
            return set(), True
        optimizer = _registered_class(
            (optim_wrapper.get('optimizer', None) or {}).get('type', None),
            scope)
        if optimizer is None:
            return set(), True
        names, open_kwargs = _accepted_args(optimizer)
        return set(options) | (names - {'params'}), open_kwargs
    return None


def _data_preprocessor_class(cfg, scope):
    """The class a type-less data_preprocessor builds: the top-level
    data_preprocessor's type (MMPretrain merges it into the model's), else
    ClsDataPreprocessor for MMPretrain's classifiers; None if unknown."""
    top = cfg.get('data_preprocessor', None) or {}
    if top.get('type', None):
        return _registered_class(top['type'], scope)
    model = _registered_class((cfg.get('model', None) or {}).get('type'),
                              scope)
    classifier = _registered_class('ImageClassifier', 'mmpretrain')
    if model is not None and classifier is not None and \
            issubclass(model, classifier):
        return _registered_class('ClsDataPreprocessor', 'mmpretrain')
    return None


def _schema(cfg, path, node, scope):
    """(names, open): the keys the dict ``node`` at ``path`` may hold
    besides its own; None where nothing is known. For a dict with a
    ``type``, the arguments of that class; for the dicts without one that
    MMEngine's Runner reads (the config's top level, loops, optim_wrapper
    and its paramwise_cfg, dataloaders, randomness, env_cfg,
    auto_scale_lr, log_processor, model_wrapper_cfg, data_preprocessor),
    what the Runner does with them."""
    from mmengine.dist import init_dist
    from mmengine.optim import OptimWrapper
    from mmengine.runner import LogProcessor, Runner
    from mmengine.utils.dl_utils import set_multi_processing
    from torch.distributed import init_process_group
    from torch.utils.data import DataLoader

    path = tuple(path)
    typed = _registered_class(node.get('type'), scope) if 'type' in node \
        else None
    extra = set()
    if not path:
        cls = _registered_class(cfg.get('runner_type', None), scope) or Runner
        extra = ROOT_EXTRA_KEYS
    elif path in (('train_cfg', ), ('val_cfg', ), ('test_cfg', )) and \
            'type' not in node:
        # Runner.build_*_loop: a type, or (train) by_epoch picks the loop.
        cls = _loop_class(cfg, path[0])
        extra = {'type', 'by_epoch'} if path[0] == 'train_cfg' else {'type'}
    elif path == ('optim_wrapper', ):
        cls = typed or OptimWrapper
        extra = {'type', 'constructor', 'paramwise_cfg'}
    elif path[:2] == ('optim_wrapper', 'paramwise_cfg'):
        return _paramwise_schema(cfg, path, scope)
    elif len(path) == 1 and path[0] in LOADERS:
        cls, extra = DataLoader, LOADER_EXTRA_KEYS
    elif path == ('randomness', ):
        cls = Runner.set_randomness
    elif path == ('env_cfg', ):
        return set(ENV_KEYS), False
    elif path == ('env_cfg', 'mp_cfg'):
        return _accepted_args(set_multi_processing)[0] - {'distributed'}, \
            False
    elif path == ('env_cfg', 'dist_cfg'):
        # init_dist's own arguments (Slurm's port), the rest go to torch.
        return (_accepted_args(init_dist)[0] - {'launcher'}) | {'port'} | \
            _accepted_args(init_process_group)[0], False
    elif path == ('auto_scale_lr', ):
        return set(AUTO_SCALE_LR_KEYS), False
    elif path == ('log_processor', ):
        cls, extra = typed or LogProcessor, {'type'}
    elif path == ('model_wrapper_cfg', ) and 'type' not in node:
        from mmengine.model import MMDistributedDataParallel
        cls, extra = MMDistributedDataParallel, {'type'}
    elif path in (('data_preprocessor', ), ('model', 'data_preprocessor')) \
            and 'type' not in node:
        cls, extra = _data_preprocessor_class(cfg, scope), {'type'}
    else:
        cls = typed
    if cls is None:
        return None
    names, open_kwargs = _accepted_args(cls)
    return (names - {'cfg'} if not path else names) | extra, open_kwargs


def _accepted_args(cls):
    """(names, open): the keyword arguments ``cls`` takes, and whether it
    takes any. A class whose __init__ has **kwargs usually forwards them
    to its base class, so the bases' arguments count too, down to the
    first __init__ without **kwargs (object's takes none: a hook without
    an __init__, or CheckpointHook's **kwargs, which go nowhere but
    Runner.save_checkpoint); only a chain that never closes is open."""
    names, chain = set(), (cls.__mro__ if inspect.isclass(cls) else [cls])
    for klass in chain:
        target = klass.__dict__.get('__init__') if inspect.isclass(klass) \
            else klass
        if target is None:  # a class without an __init__ of its own
            continue
        if klass is object:
            return names - {'self'}, False
        try:
            params = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):
            return names, True
        names |= {p.name for p in params
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {'self'}, False
        if not inspect.isclass(cls):
            break
    return names - {'self'}, True


def _suggest(word, candidates):
    close = difflib.get_close_matches(word, sorted(candidates), n=1,
                                      cutoff=0.6)
    return close[0] if close else None


def check_cfg_options(cfg, options):
    """Validate ``--cfg-options`` against ``cfg``; return them ready for
    ``cfg.merge_from_dict``.

    A key must name an entry of the config, or an argument that the class
    named by the enclosing dict's ``type`` accepts (e.g.
    ``model.backbone.frozen_stages`` where the config leaves it at its
    default); ``train_cfg``/``val_cfg``/``test_cfg`` are checked against
    MMEngine's loops. To add a key on purpose that neither knows, write it
    with a leading ``+`` (``+model.backbone.my_arg=1``); the ``+`` form
    refuses a key that already exists. List items are addressed by index
    (``train_pipeline.1.crop_size=28``).

    Raises:
        ToolError: listing every bad key with the closest existing one.
    """
    if not options:
        return options
    scope = cfg.get('default_scope', None)
    checked, problems = {}, []
    for raw_key, value in options.items():
        new = raw_key.startswith(NEW_KEY_PREFIX)
        key = raw_key[len(NEW_KEY_PREFIX):] if new else raw_key
        problem = _check_key(cfg, key, new, scope)
        if problem:
            problems.append(problem)
        checked[key] = value
    if problems:
        raise ToolError(
            'bad --cfg-options key' + ('s' if len(problems) > 1 else '') +
            ':\n  ' + '\n  '.join(problems) + '\n(keys follow the config '
            'file; write +key=value to add a key the config does not have)')
    return checked


def _check_key(cfg, key, new, scope):
    parts = key.split('.')
    if not all(parts):
        return f'{key}: empty part in the dotted key'
    # absent: the dict at path is not in the config but an argument there
    # (optim_wrapper.clip_grad), so only a known schema can refuse a key.
    node, path, absent = cfg, [], False
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if _is_mapping(node):
            if part in node:
                if new and last:
                    return (f'+{key}: the key exists already; drop the + to '
                            'change it')
                node, path = node[part], path + [part]
                continue
            if new:
                return None  # adding on purpose (parents are created)
            schema = _schema(cfg, path, node, scope)
            if schema is None and absent:
                return None
            args, open_kwargs = schema or (set(), False)
            if part in args or open_kwargs:
                node, path, absent = {}, path + [part], True
                continue
            guess = _suggest(part, set(node.keys()) | args)
            where = (f' ({part!r} is not in {".".join(path)})' if path and
                     not last else f' ({part!r})' if not last else '')
            hint = ('; did you mean ' + '.'.join(path + [guess] +
                                                 parts[depth + 1:]) + '?'
                    ) if guess else ''
            return f'{key}: no such key{where}{hint}'
        if isinstance(node, (list, tuple)):
            # MMEngine's merge takes digits only: no negative index.
            if not part.isdigit() or int(part) >= len(node):
                return (f'{key}: {".".join(path)} is a list of {len(node)} '
                        f'items; address one by its index 0..{len(node) - 1}')
            node, path = node[int(part)], path + [part]
            continue
        shown = repr(node)
        shown = shown if len(shown) <= 60 else shown[:57] + '...'
        return (f'{key}: {".".join(path)} is {shown} (a '
                f'{type(node).__name__}), which has no keys')
    return None
