"""Train a model with MMEngine's Runner; same arguments as MMPretrain's train.

    python tools/train.py configs/adder_r20_digits.py
    tools/dist_train.sh configs/adder_r20_digits.py 2      # torchrun, 2 procs

``adder_mm`` is imported here, so configs need no ``custom_imports``.

Without CUDA, a distributed launch (``--launcher pytorch``, as torchrun in
tools/dist_train.sh) runs on CPU by itself: this script sets
``env_cfg.dist_cfg.backend='gloo'``, creates the gloo process group from
torchrun's environment (MMEngine's own set-up would call
``torch.cuda.set_device``) and wraps the model in DDP without ``device_ids``.
The Slurm and MPI launchers still need GPUs.
"""
import argparse
import os
import os.path as osp
import sys
import time
from copy import deepcopy

# Checks shared with tools/test.py (which imports them from here). They run
# before the Runner is built so that bad use fails fast with a message that
# says what to do, instead of a traceback from deep inside a dataset class.


class ToolError(Exception):
    """Bad use of a tool; main() prints it without a traceback."""


def check_config_path(parser, path):
    """Exit through argparse when the config file does not exist."""
    if not osp.isfile(path):
        parser.error(f'config file not found: {path!r} (looked in '
                     f'{osp.abspath(path)!r}; configs live under configs/, '
                     'e.g. configs/adder_r20_digits.py)')


def _data_roots(dataset_cfg, key):
    """Yield (dotted key, data_root) of a dataset config and its wrapped
    datasets (RepeatDataset/ConcatDataset/ClassBalancedDataset)."""
    if not isinstance(dataset_cfg, dict):
        return
    root = dataset_cfg.get('data_root', None)
    if root:
        yield f'{key}.data_root', root
    yield from _data_roots(dataset_cfg.get('dataset', None), f'{key}.dataset')
    for i, sub in enumerate(dataset_cfg.get('datasets', None) or []):
        yield from _data_roots(sub, f'{key}.datasets.{i}')


def check_data_roots(cfg, config_path, fields):
    """Raise ToolError when a dataset folder named by ``data_root`` in one of
    the dataloaders ``fields`` is missing (remote URIs are not checked)."""
    for field in fields:
        loader = cfg.get(field, None)
        if not loader:
            continue
        for key, root in _data_roots(loader.get('dataset', None),
                                     f'{field}.dataset'):
            if '://' in str(root) or osp.isdir(osp.expanduser(str(root))):
                continue
            raise ToolError(
                f'dataset folder not found: {root!r} ({key} in {config_path}'
                f', resolved to {osp.abspath(osp.expanduser(str(root)))!r}).'
                ' Put the dataset there, or point the config at it with '
                f'--cfg-options {key}=/path/to/dataset. (mmpretrain\'s '
                'CIFAR datasets download into an existing empty folder when '
                'the machine has network.) configs/adder_r20_digits.py '
                'needs no dataset folder.')


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint; without a path, from the latest '
        'checkpoint in the work dir')
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument(
        '--no-validate',
        action='store_true',
        help='do not evaluate during training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by (total batch size / auto_scale_lr.'
        'base_batch_size)')
    parser.add_argument(
        '--no-pin-memory',
        action='store_true',
        help='disable pin_memory in the dataloaders')
    parser.add_argument(
        '--no-persistent-workers',
        action='store_true',
        help='disable persistent_workers in the dataloaders')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=_dict_action(),
        help='override config entries, key=value (e.g. '
        'train_cfg.max_epochs=2 optim_wrapper.optimizer.lr=0.05)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    check_config_path(parser, args.config)
    return args


def _dict_action():
    from mmengine.config import DictAction
    return DictAction


def merge_args(cfg, args):
    """Apply the command line to the config (CLI > config > defaults)."""
    from mmengine.config import ConfigDict

    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    cfg.launcher = args.launcher

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg:
            raise ToolError(
                '--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=N) '
                f'in the config {args.config}')
        cfg.auto_scale_lr.enable = True

    import torch

    loader_defaults = ConfigDict(
        # Pinned memory only speeds up copies to a GPU (and warns without).
        pin_memory=torch.cuda.is_available(),
        persistent_workers=True,
        collate_fn=dict(type='default_collate'))
    for field in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(field, None) is None:
            continue
        loader = deepcopy(loader_defaults)
        loader.update(cfg[field])
        # persistent_workers=True is rejected by DataLoader when there are
        # no workers.
        if loader.get('num_workers', 0) == 0:
            loader.persistent_workers = False
        if args.no_pin_memory:
            loader.pin_memory = False
        if args.no_persistent_workers:
            loader.persistent_workers = False
        cfg[field] = loader

    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def build_runner(args, merge, loaders, prog):
    """Load ``args.config``, apply the command line (``merge(cfg, args)``),
    check the data roots of ``loaders`` and the CPU launch, and build the
    Runner. A ToolError ends the process with ``prog: error: message``."""
    import adder_mm  # noqa: F401  (registers models, datasets, optimizers)
    from mmengine.config import Config
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    from mmpretrain.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(args.config)
    try:
        cfg = merge(cfg, args)
        check_data_roots(cfg, args.config, loaders)
        prepare_cpu_distributed(cfg)
    except ToolError as e:
        sys.exit(f'{prog}: error: {e}')
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def main(argv=None):
    args = parse_args(argv)
    # Heavy imports after the argument checks, so bad use fails fast.
    runner = build_runner(args, merge_args,
                          ('train_dataloader', 'val_dataloader'),
                          osp.basename(__file__))
    start = time.perf_counter()
    runner.train()
    report_final_metrics(runner, time.perf_counter() - start)


def report_final_metrics(runner, seconds):
    """Log the last validation metrics and the wall time of runner.train()
    as the run's final line (the Runner's own log ends with checkpoint
    messages)."""
    hub = runner.message_hub
    metrics = {
        key[len('val/'):]: buf.current()
        for key, buf in hub.log_scalars.items()
        # val/time and val/data_time are loop timings, not metrics.
        if key.startswith('val/') and key not in ('val/time', 'val/data_time')
    }
    text = ', '.join(f'{k}: {v:.4f}' for k, v in metrics.items())
    if text:
        text = f'final validation (epoch {runner.epoch}): {text}; '
    runner.logger.info(f'{text}training took {seconds:.0f} s '
                       f'({seconds / 60:.1f} min)')


if __name__ == '__main__':
    main()
