"""``--cfg-options`` checked against the loaded config before anything is
built: a misspelt key is an error naming the closest existing one, instead
of a TypeError after 300 lines of config, or a silent no-op."""
import difflib
import inspect

from .errors import ToolError

NEW_KEY_PREFIX = '+'


def cfg_options_action():
    """The argparse action of ``--cfg-options``: MMEngine's DictAction, but
    an entry without ``=`` is a usage error naming it (DictAction raises a
    bare ValueError from its own unpacking)."""
    from mmengine.config import DictAction

    class CfgOptionsAction(DictAction):

        def __call__(self, parser, namespace, values, option_string=None):
            for kv in values if isinstance(values, list) else [values]:
                if '=' not in kv:
                    parser.error(
                        f'{option_string} {kv}: expected key=value (e.g. '
                        'train_cfg.max_epochs=3; +key=value adds a new key)')
            super().__call__(parser, namespace, values, option_string)

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
    node, path = cfg, []
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
            # Keyword arguments of the class the dict builds.
            cls = (_loop_class(cfg, path[0]) if len(path) == 1 and path[0] in
                   ('train_cfg', 'val_cfg', 'test_cfg') and 'type' not in node
                   else _registered_class(node.get('type'), scope))
            args, open_kwargs = (_accepted_args(cls) if cls is not None else
                                 (set(), False))
            if part in args or (cls is not None and open_kwargs):
                return None
            guess = _suggest(part, set(node.keys()) | args)
            where = (f' ({part!r} is not in {".".join(path)})' if path and
                     not last else f' ({part!r})' if not last else '')
            hint = ('; did you mean ' + '.'.join(path + [guess] +
                                                 parts[depth + 1:]) + '?'
                    ) if guess else ''
            return f'{key}: no such key{where}{hint}'
        if isinstance(node, (list, tuple)):
            if not part.lstrip('-').isdigit() or not \
                    -len(node) <= int(part) < len(node):
                return (f'{key}: {".".join(path)} is a list of {len(node)} '
                        f'items; address one by its index 0..{len(node) - 1}')
            node, path = node[int(part)], path + [part]
            continue
        shown = repr(node)
        shown = shown if len(shown) <= 60 else shown[:57] + '...'
        return (f'{key}: {".".join(path)} is {shown} (a '
                f'{type(node).__name__}), which has no keys')
    return None
