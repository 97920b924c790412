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
import time
from copy import deepcopy

from adder_mm.apis import (
    ToolError,
    add_default_hooks,
    bare_model,
    build_runner,
    cfg_options_action,
    check_checkpoint,
    check_config_path,
    check_optimizer_state,
    check_work_dir,
    run_tool,
)


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
        action=cfg_options_action(),
        help='override config entries, key=value (e.g. '
        'train_cfg.max_epochs=2 optim_wrapper.optimizer.lr=0.05); a key the '
        'config does not have is an error naming the closest one, unless '
        'written +key=value (added on purpose)')
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
    check_work_dir(parser, args.work_dir)
    if args.amp:
        import torch
        if not torch.cuda.is_available():
            parser.error('--amp trains with AmpOptimWrapper, which needs a '
                         'GPU; none is visible')
    return args


# Keys only a flag sets: refused in --cfg-options.
OWNED = {'launcher': '--launcher', 'resume': '--resume'}


def amp_wrapper(cfg, args):
    """--amp: AmpOptimWrapper (before --cfg-options are checked, so that
    optim_wrapper.loss_scale / dtype are known keys)."""
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def merge_args(cfg, args):
    """Apply the tool's flags to the config (flags > --cfg-options, which
    build_runner merged first > defaults > config; --amp in
    amp_wrapper)."""
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
        if args.no_pin_memory:
            loader.pin_memory = False
        if args.no_persistent_workers:
            loader.persistent_workers = False
        cfg[field] = loader

    return cfg


def check_start_checkpoint(runner, preread=(None, None)):
    """The checkpoint training starts from, read and compared with the
    model before anything trains: --resume needs an exact match, a
    config's load_from (fine-tuning) at least one shared weight (the
    differences are logged). preread: (path, contents) read before the
    Runner was built."""
    cfg = runner.cfg
    path = cfg.get('load_from', None)
    if cfg.get('resume', False) and not path:
        from mmengine.runner import find_latest_checkpoint
        path = find_latest_checkpoint(runner.work_dir)
        if path == '':
            raise ToolError(
                f'--resume: {osp.join(runner.work_dir, "last_checkpoint")} '
                'is empty (a save that did not finish wrote it); give the '
                'checkpoint to resume from: --resume PATH')
        if path is None:
            runner.logger.info('--resume: no checkpoint in '
                               f'{runner.work_dir}, training from scratch')
            # MMEngine would log "Auto resumed from ... None" otherwise.
            runner._resume = False
            return
    if not path:
        return
    resume = bool(cfg.get('resume', False))
    model = bare_model(runner)
    what = '--resume checkpoint' if resume else 'load_from checkpoint'
    ckpt, diff = check_checkpoint(
        path, model, strict=resume, what=what, config=cfg.filename,
        ckpt=preread[1] if path == preread[0] else None)
    if resume:
        check_optimizer_state(ckpt, cfg, path, what)
    if diff:
        runner.logger.warning(f'load_from {path!r} differs from the model '
                              f'(loaded where it matches):{diff}')


def main(argv=None):
    args = parse_args(argv)
    # A bad --resume file stops the tool before anything is built.
    resume = args.resume if args.resume not in (None, 'auto') else None
    # Heavy imports after the argument checks, so bad use fails fast.
    runner, ckpt = build_runner(args, merge_args,
                                ('train_dataloader', 'val_dataloader'),
                                checkpoint=resume, what='--resume checkpoint',
                                check=dict(strict=True), owned=OWNED,
                                retype=amp_wrapper)
    check_start_checkpoint(runner, (resume, ckpt))
    add_default_hooks(runner)
    start = time.perf_counter()
    from adder_mm.quantization import CalibrationError
    try:
        runner.train()
    except CalibrationError as e:  # QATCalibrationHook: the data or model
        raise ToolError(str(e)) from None
    report_final_metrics(runner, time.perf_counter() - start)
    return runner


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
    run_tool(main, prog=osp.basename(__file__))
