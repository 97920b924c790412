"""Evaluate a checkpoint with MMEngine's Runner; same arguments as
MMPretrain's test.

    python tools/test.py configs/adder_r20_digits.py CHECKPOINT.pth
    tools/dist_test.sh CONFIG CHECKPOINT 2

``adder_mm`` is imported here, so configs need no ``custom_imports``. The
checkpoint must match the model exactly (every key and shape): a mismatch
stops with the list of differences instead of silently testing a partly
random network. Without CUDA a torchrun launch uses gloo (see train.py).
"""
import argparse
import os
import os.path as osp
from copy import deepcopy

from adder_mm.apis import (
    ToolError,
    bare_model,
    build_runner,
    cfg_options_action,
    check_checkpoint,
    check_config_path,
    check_out_path,
    check_work_dir,
    run_tool,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (path or URL)')
    parser.add_argument(
        '--work-dir', help='the dir to save logs and evaluation metrics')
    parser.add_argument('--out', help='file to dump results to (.pkl; '
                        'metrics also .json/.yaml)')
    parser.add_argument(
        '--out-item',
        choices=['metrics', 'pred'],
        help="what --out holds: 'pred' (per-sample predictions, default) or "
        "'metrics'")
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=cfg_options_action(),
        help='override config entries, key=value')
    parser.add_argument(
        '--amp', action='store_true', help='fp16 inference (test_cfg.fp16)')
    parser.add_argument(
        '--show-dir', help='save prediction visualisations to this dir')
    parser.add_argument(
        '--show', action='store_true', help='display predictions')
    parser.add_argument(
        '--interval', type=int, default=1, help='visualise every N samples')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='seconds per shown image')
    parser.add_argument(
        '--no-pin-memory',
        action='store_true',
        help='disable pin_memory in the dataloader')
    parser.add_argument(
        '--tta',
        action='store_true',
        help='test-time augmentation: the config\'s tta_model/tta_pipeline, '
        'or averaged scores of the image and its horizontal flip')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    check_config_path(parser, args.config)
    if args.out is None and args.out_item is not None:
        parser.error('--out-item needs --out FILE')
    check_out_path(parser, args.out)
    check_work_dir(parser, args.work_dir)
    # What DumpResults (predictions) and mmengine.dump (metrics) write.
    kinds = (('.pkl', '.pickle') if args.out_item in ('pred', None) else
             ('.json', '.yaml', '.yml', '.pkl', '.pickle'))
    if args.out and not args.out.lower().endswith(kinds):
        parser.error(f'--out {args.out!r}: {args.out_item or "pred"} is '
                     f'written as {"/".join(kinds)}')
    return args


# Keys only the command line sets: refused in --cfg-options.
OWNED = {'launcher': '--launcher', 'load_from': 'the CHECKPOINT argument'}


def merge_args(cfg, args):
    """Apply the tool's flags to the config (flags > --cfg-options, which
    build_runner merged first > defaults > config)."""
    from mmengine.config import ConfigDict

    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint

    if args.amp:
        cfg.test_cfg.fp16 = True

    if args.show or args.show_dir is not None:
        vis = cfg.get('default_hooks', {}).get('visualization', None)
        if vis is None:
            raise ToolError('--show/--show-dir need default_hooks.'
                            "visualization=dict(type='VisualizationHook') in "
                            'the config')
        vis.update(
            enable=True,
            show=args.show,
            wait_time=args.wait_time,
            out_dir=args.show_dir,
            interval=args.interval)

    if args.tta:
        if 'tta_model' not in cfg:
            cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
        if 'tta_pipeline' not in cfg:
            pipeline = cfg.test_dataloader.dataset.pipeline
            cfg.tta_pipeline = deepcopy(pipeline)
            # Flip / no-flip views, each packed by the pipeline's last step.
            cfg.tta_pipeline[-1] = dict(
                type='TestTimeAug',
                transforms=[[
                    dict(type='RandomFlip', prob=1.),
                    dict(type='RandomFlip', prob=0.)
                ], [pipeline[-1]]])
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline

    import torch

    # Pinned memory only speeds up copies to a GPU (and warns without).
    loader = ConfigDict(
        pin_memory=torch.cuda.is_available(),
        collate_fn=dict(type='default_collate'))
    loader.update(cfg.test_dataloader)
    if args.no_pin_memory:
        loader.pin_memory = False
    cfg.test_dataloader = loader

    return cfg


def main(argv=None):
    args = parse_args(argv)
    # The checkpoint is read before anything is built (a bad file stops
    # the tool there) and compared with the model before testing: the
    # Runner's own load (in test()) only warns on a mismatch and would test
    # a partly random network. Costs a second read of the file.
    check = dict(strict=True, quantized='convert')
    runner, ckpt = build_runner(args, merge_args, ('test_dataloader', ),
                                checkpoint=args.checkpoint, check=check,
                                owned=OWNED)
    model = bare_model(runner)
    # A quantized checkpoint (tools/quantize.py) gets its integer layers.
    check_checkpoint(args.checkpoint, model, config=args.config, ckpt=ckpt,
                     **check)
    from adder_mm.models.layers import QATAdderConv2d, QuantAdderConv2d
    from adder_mm.quantization.runner import quantized_spec
    spec = quantized_spec(ckpt or {})
    qat = [m for m in model.modules() if isinstance(m, QATAdderConv2d)]
    if spec is not None:
        n = sum(isinstance(m, QuantAdderConv2d) for m in model.modules())
        runner.logger.info(
            f'quantized checkpoint ({spec.get("method")}, '
            f'{spec.get("bits")}-bit): {n} adder layers run on integers')
    elif qat:  # the strict check saw their grids in the checkpoint
        runner.logger.info(
            f'quantization-aware checkpoint: {len(qat)} adder layers run on '
            f'its {qat[0].bits}-bit grids (the values the integer model '
            'computes on)')

    import mmengine
    from mmengine.evaluator import DumpResults
    if args.out and args.out_item in ('pred', None):
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    metrics = runner.test()
    if args.out and args.out_item == 'metrics':
        mmengine.dump(metrics, args.out)
    return metrics


if __name__ == '__main__':
    run_tool(main, prog=osp.basename(__file__))
