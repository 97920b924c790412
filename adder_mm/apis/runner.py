"""Building MMEngine's Runner for the tools: config, command line, the
checks that run before anything is built, and the hooks every adder_mm
training run gets."""
import copy
import os
import os.path as osp
import sys

from adder_mm.utils.markdown import check_section

from .cfg_options import NEW_KEY_PREFIX, check_cfg_options
from .checkpoints import check_checkpoint, read_checkpoint
from .data_roots import LOADERS, prepare_data_roots
from .errors import ToolError


def prepare_cpu_distributed(cfg):
    """Make a distributed launch work without CUDA: gloo + CPU DDP.

    MMEngine's own distributed set-up calls ``torch.cuda.set_device``, which
    fails without a GPU, so for the pytorch launcher (torchrun) the gloo
    process group is created here from torchrun's environment variables;
    the Runner then finds it initialised and skips its own set-up.
    """
    import torch
    import torch.distributed as dist

    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.launcher != 'pytorch':
        raise ToolError(
            f'--launcher {cfg.launcher} needs CUDA GPUs; on a CPU-only '
            'machine launch with torchrun (tools/dist_train.sh CONFIG N), '
            'which uses the gloo backend')
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'
    if not dist.is_initialized():
        kwargs = {}
        if dist_cfg.get('timeout', None) is not None:
            import datetime
            kwargs['timeout'] = datetime.timedelta(seconds=dist_cfg.timeout)
        dist.init_process_group(backend='gloo', **kwargs)
    # DDP takes no device_ids for a CPU module; MMEngine passes
    # [LOCAL_RANK] unless the wrapper config names them.
    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:
        wrapper = dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    if wrapper.get('type', 'MMDistributedDataParallel') in (
            'MMDistributedDataParallel', 'DistributedDataParallel'):
        wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def check_config_path(parser, path):
    """Exit through argparse when the config file does not exist (before
    any heavy import)."""
    if not osp.isfile(path):
        parser.error(f'config file not found: {path!r} (looked in '
                     f'{osp.abspath(path)!r}; configs live under configs/, '
                     'e.g. configs/adder_r20_digits.py)')


def _check_creatable(parser, option, path, folder):
    """Exit through argparse unless ``folder`` (``path``'s place) can be
    made: its nearest existing part must be a writable folder (the writers
    make the missing ones)."""
    parent = osp.abspath(folder)
    while not osp.exists(parent):
        parent = osp.dirname(parent)
    if not osp.isdir(parent):
        parser.error(f'{option} {path!r}: {parent!r} is a file')
    if not os.access(parent, os.W_OK):
        parser.error(f'{option} {path!r}: {parent!r} is not writable')


def check_out_path(parser, path, option='--out'):
    """Exit through argparse when an output file could not be written at
    the end of a run: the path is a folder, lies under a file, or under a
    folder that is not writable."""
    if path is None:
        return
    if osp.isdir(path):
        parser.error(f'{option} {path!r} is a folder; give a file name')
    _check_creatable(parser, option, path, osp.dirname(osp.abspath(path)))


def check_markdown_path(parser, path, section, option='--markdown'):
    """check_out_path, and that section ``section`` of the file can be
    written (write_section refuses a marker without its pair)."""
    if path is None:
        return
    check_out_path(parser, path, option)
    try:
        check_section(path, section)
    except ValueError as e:
        parser.error(f'{option} {e}')


def check_work_dir(parser, path):
    """Exit through argparse when ``--work-dir`` cannot become a folder:
    empty, an existing file, under a file, or under an unwritable
    folder."""
    if path is None:
        return
    if not path.strip():
        parser.error('--work-dir is empty; give a folder')
    if osp.exists(path) and not osp.isdir(path):
        parser.error(f'--work-dir {path!r} is a file, not a folder')
    _check_creatable(parser, '--work-dir', path, path)


def apply_cfg_options(cfg, options):
    """Check ``--cfg-options`` (see check_cfg_options) and merge them; a
    loader left without workers then also loses ``persistent_workers``
    (see drop_idle_persistent_workers)."""
    if options:
        cfg.merge_from_dict(check_cfg_options(cfg, options))
    return drop_idle_persistent_workers(cfg)


def drop_idle_persistent_workers(cfg):
    """``persistent_workers=False`` for every loader without workers, which
    DataLoader refuses with them (``num_workers=0`` given on the command
    line for a config with workers, or a tool's loader defaults)."""
    for field in LOADERS:
        loader = cfg.get(field, None)
        if loader and loader.get('num_workers', 0) == 0 and \
                loader.get('persistent_workers', False):
            loader.persistent_workers = False
    return cfg


def load_config(path):
    """Config.fromfile with the errors of a broken config file as
    ToolError (the file's own syntax or name errors, a missing base)."""
    from mmengine.config import Config
    try:
        return Config.fromfile(path)
    except (SyntaxError, NameError, ImportError, OSError, KeyError,
            TypeError, ValueError, AttributeError, RecursionError) as e:
        raise ToolError(f'config {path!r} cannot be loaded: '
                        f'{type(e).__name__}: {e}') from None


def _hook_types(cfg):
    return {h.get('type') if isinstance(h, dict) else type(h).__name__
            for h in cfg.get('custom_hooks', None) or []}


def has_adder_layers(model):
    from adder_mm.models.layers import count_adder_layers
    return count_adder_layers(model) > 0


def add_default_hooks(runner):
    """The hooks every training run of the tools gets unless the config
    lists them: ExactResumeHook (exact ``--resume``), and for models with
    adder layers BNRecalibrationHook (BN statistics that match the weights
    whenever the model is evaluated or saved; see its docstring for why
    adders need it), and for models with QATAdderConv2d layers
    QATCalibrationHook (their quantization grids before the first step). A
    CNN without adder layers gets no BN hook."""
    from adder_mm.engine import (
        BNRecalibrationHook,
        ExactResumeHook,
        QATCalibrationHook,
    )
    from adder_mm.quantization.ptq import qat_layers
    present = {type(h) for h in runner.hooks}
    added = []
    if QATCalibrationHook not in present and qat_layers(runner.model):
        runner.register_hook(QATCalibrationHook())
        added.append('QATCalibrationHook (the model has QAT layers)')
    if ExactResumeHook not in present:
        runner.register_hook(ExactResumeHook())
        added.append('ExactResumeHook')
    if BNRecalibrationHook not in present and has_adder_layers(runner.model):
        runner.register_hook(BNRecalibrationHook())
        added.append('BNRecalibrationHook (the model has adder layers)')
    if added:
        runner.logger.info('adder_mm: added ' + ', '.join(added) +
                           ' (list them in custom_hooks to configure them)')


def tool_config(args, merge, owned=None, retype=None):
    """``args.config`` loaded, with ``args.cfg_options`` and then the tool's
    own flags (``merge(cfg, args)``) applied.

    The options address the config file as written, so they go first; the
    flags then reshape it (--no-validate drops the val_* dicts, --tta wraps
    the model) and win over them where both set a value (--work-dir); the
    tools' defaults (a work dir named after the config) leave an option's
    value alone. ``owned`` {key: flag}: keys only a flag may set (the
    launcher, the checkpoint to test), refused in the options.
    ``retype(cfg, args)``: flags that change which class a dict builds
    (train.py --amp: AmpOptimWrapper), applied before the options are
    checked, so that those can name the new class's arguments.
    """
    cfg = load_config(args.config)
    if retype is not None:
        retype(cfg, args)
    options = args.cfg_options or {}
    taken = [f'{key} (use {flag})' for key, flag in (owned or {}).items()
             if key in options or NEW_KEY_PREFIX + key in options]
    if taken:
        raise ToolError('--cfg-options: set by the command line, not the '
                        'options: ' + ', '.join(taken))
    cfg = apply_cfg_options(cfg, options)
    return drop_idle_persistent_workers(merge(cfg, args))


def _check_before_building(cfg, path, ckpt, what, config, check):
    """check_checkpoint(**check) against a model built from the config,
    so that a checkpoint made for another model stops the tool before the
    Runner writes its work dir, log and config copy (a second build of
    the model, on the CPU: mmpretrain's ResNet cannot be built on the meta
    device). A model that cannot be built here is left to the tool's own
    check after the Runner is built."""
    from mmengine.registry import MODELS, DefaultScope
    try:
        with DefaultScope.overwrite_default_scope(
                cfg.get('default_scope', None)):
            model = MODELS.build(copy.deepcopy(cfg.model))
    except Exception:  # noqa: BLE001 (checked again after the build)
        return
    # The model the checkpoint belongs to, without a --tta wrapper (as
    # bare_model does after the build).
    check_checkpoint(path, getattr(model, 'module', model), what=what,
                     config=config, ckpt=ckpt, **check)


def build_runner(args, merge, loaders, checkpoint=None, what='checkpoint',
                 check=None, owned=None, retype=None):
    """Load ``args.config`` with the command line applied (tool_config,
    which takes ``owned`` and ``retype``), check the data roots of
    ``loaders`` and the CPU launch, read ``checkpoint`` (read_checkpoint;
    ``what`` names its role in messages) and, with ``check``
    (check_checkpoint's strict/quantized), compare it with the config's
    model, then build the Runner. Raises ToolError on bad use, before
    anything is built.

    Returns:
        (Runner, the checkpoint's contents or None without ``checkpoint``
        or for a remote file).
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    from mmpretrain.utils import register_all_modules

    import adder_mm  # noqa: F401  (registers models, datasets, hooks)

    register_all_modules(init_default_scope=False)
    cfg = tool_config(args, merge, owned, retype)
    prepare_data_roots(cfg, args.config, loaders)
    prepare_cpu_distributed(cfg)
    ckpt = read_checkpoint(checkpoint, what) if checkpoint else None
    if ckpt is not None and check is not None:
        _check_before_building(cfg, checkpoint, ckpt, what, args.config,
                               check)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg), ckpt
    return Runner.from_cfg(cfg), ckpt


def bare_model(runner):
    """The runner's model without its DDP/FSDP wrapper."""
    return getattr(runner.model, 'module', runner.model)


def run_tool(main, argv=None, prog=None):
    """Run a tool's ``main(argv)``; a ToolError ends the process with
    ``prog: error: message`` and status 2, without a traceback, and so
    does a download that fails (a dataset with ``download=True`` or a
    checkpoint URL without network).

    Returns what ``main`` returns, except in a distributed run: there the
    result (the Runner, whose DDP model holds the process group) is dropped
    so that :func:`end_distributed` can free the group before exit.
    """
    from urllib.error import URLError
    prog = prog or osp.basename(sys.argv[0])
    try:
        result = main(argv)
    except ToolError as e:
        message = str(e)
    except URLError as e:
        message = (f'a download failed ({e.reason}); without network, put '
                   'the files in place and point the config at them')
    else:
        if not _distributed():
            return result
        del result
        end_distributed()
        return None
    # Outside the except clauses: the exception and its frames are gone.
    end_distributed()
    print(f'{prog}: error: {message}', file=sys.stderr)
    raise SystemExit(2)


def _distributed():
    dist = sys.modules.get('torch.distributed')  # never imported: no group
    return dist is not None and dist.is_available() and dist.is_initialized()


def end_distributed():
    """Free the default process group while Python is still fully alive.

    MMEngine leaves the group to the interpreter's exit. A gloo worker
    thread that drops its last reference to a finished collective's tensors
    during interpreter finalization needs the GIL, cannot get it, and aborts
    the process ("terminate called without an active exception", SIGABRT:
    torchrun reports a failed run after a successful one). Destroying the
    group once nothing else holds it (call this after dropping the Runner)
    joins those threads here. Local to the process: it waits on no rank.
    """
    if not _distributed():
        return
    import gc

    import torch.distributed as dist
    gc.collect()  # reference cycles that still hold the DDP model
    dist.destroy_process_group()
