"""QATCalibrationHook: the quantization grids of quantization-aware training,
fixed from data before the first step."""
import torch
import torch.distributed as torch_dist
from mmengine.dist import broadcast, get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from adder_mm.quantization.ptq import (
    calibrate_qat,
    check_percentile,
    qat_layers,
)
from adder_mm.quantization.runner import calibration_loader

from .rng import fork_rng


def calibrate_on_rank0(layers, calibrate):
    """Run ``calibrate()`` in rank 0 alone and give the QAT ``layers`` of
    every process rank 0's grids (one model everywhere). When it fails
    there, every process raises (none waits for grids that never come)."""
    rank, world = get_dist_info()
    if world == 1 or not torch_dist.is_initialized():
        calibrate()
        return
    failure = None
    if rank == 0:
        try:
            calibrate()
        except Exception as e:  # re-raised below, after telling the others
            failure = e
    failed = torch.tensor([failure is not None], dtype=torch.uint8)
    broadcast(failed, 0)
    if failure is not None:
        raise failure
    if failed.item():
        raise RuntimeError('QATCalibrationHook: calibrating the QAT grids '
                           "failed in rank 0 (its log says why)")
    for m in layers:
        broadcast(m.grid_lo, 0)
        broadcast(m.grid_scale, 0)
        m.set_grid(m.grid_lo, m.grid_scale)


@HOOKS.register_module()
class QATCalibrationHook(Hook):
    """Before training, give every QATAdderConv2d without a grid its grid
    (``adder_mm.quantization.calibrate_qat``: the layer's inputs up to a
    percentile) from ``num_batches`` batches
    of the config's training images through its test pipeline, the
    calibration data of tools/quantize.py. Layers whose grid came with the
    checkpoint (``--resume``, or ``load_from`` a QAT checkpoint) keep it.
    Under distributed training rank 0 calibrates and every process takes
    its grids. The random generators are left as they were (``--resume``
    stays exact).

    tools/train.py adds this hook to models with QATAdderConv2d layers when
    the config does not list it.

    Args:
        num_batches (int): calibration batches. Default: 8.
        act_percentile (float): where each layer's grid clips its inputs
            (``calibrate_qat``). Default: 99.99.
    """

    priority = 'VERY_HIGH'  # before any other hook runs the model

    def __init__(self, num_batches=8, act_percentile=99.99):
        if not isinstance(num_batches, int) or isinstance(num_batches, bool) \
                or num_batches < 1:
            raise ValueError('QATCalibrationHook: num_batches must be a '
                             f'positive int, got {num_batches!r}')
        check_percentile(act_percentile, 'QATCalibrationHook')
        self.num_batches = num_batches
        self.act_percentile = act_percentile

    def before_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        layers = qat_layers(model)
        if not layers:
            runner.logger.warning('QATCalibrationHook: the model has no '
                                  'QATAdderConv2d layers; nothing to do')
            return
        pending = [n for n, m in layers if not m.calibrated]
        if not pending:
            runner.logger.info('QATCalibrationHook: every QAT layer has its '
                               'grid from the checkpoint')
            return

        def calibrate():
            with fork_rng():
                loader = calibration_loader(runner.cfg, seed=runner.seed)
                calibrate_qat(model, loader, self.num_batches,
                              act_percentile=self.act_percentile)

        calibrate_on_rank0([m for _, m in layers], calibrate)
        first = dict(layers)[pending[0]]
        lo, scale = first.grid()
        runner.logger.info(
            f'QATCalibrationHook: {len(pending)} QAT layer grids set from '
            f'{self.num_batches} batches of training images, e.g. '
            f'{pending[0]}: lo {lo:.4g}, scale {scale:.4g} '
            f'({first.bits}-bit)')
