"""BNRecalibrationHook: BatchNorm statistics that match the weights
whenever the model is evaluated or saved."""
import torch
import torch.distributed as torch_dist
from mmengine.dist import all_reduce, get_dist_info
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from .exact_resume_hook import _worker_warnings, epoch_seed
from .rng import fork_rng


def batch_norms(model):
    """The BatchNorm layers of ``model`` whose running statistics training
    updates: those that keep running statistics and are in training mode
    when the model is. A backbone's ``norm_eval`` or ``frozen_stages``
    keeps some in eval mode through its ``train()``, their statistics
    frozen; those are left alone. The modules' modes are restored."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train()
        return [m for m in model.modules()
                if isinstance(m, _BatchNorm) and m.track_running_stats
                and m.training]
    finally:
        for m, was in modes:
            m.train(was)


@HOOKS.register_module()
class BNRecalibrationHook(Hook):
    """Recompute BatchNorm running statistics before every validation, test
    and checkpoint that follows training, and at the end of training.

    Adder layers trained with the adaptive learning rate move by a fixed
    norm every step, so BN's running averages (momentum 0.1) lag behind
    the weights until the learning rate has decayed: a model evaluated or
    saved with them classifies at chance. This hook averages the batch
    statistics of ``num_samples`` training images (train pipeline, model
    in eval mode but for the BN layers, no gradients; batches of equal
    size) into fresh running statistics, exactly (cumulative average, not
    momentum), whenever the weights changed since the last time and the
    model is about to be validated, tested or saved; the checkpoint gets
    the new statistics.
    In distributed training every rank recomputes on its own share of the
    images and the statistics are averaged over ranks. BN layers that
    training leaves in eval mode (``norm_eval``, ``frozen_stages``) keep
    their statistics.

    Cost: one forward pass without gradients over ``num_samples`` images
    per validation or checkpoint (one pass when both follow the same
    epoch), about ``num_samples / (3 x epoch size)`` of an epoch each.

    It draws its images with its own generator and leaves the process's
    random generators as they were, so it does not change the training
    run; a model without BN layers makes it a no-op.

    Args:
        num_samples (int): training images per recalibration. Default 1024.
        batch_size (int, optional): default: the train loader's (or its
            batch sampler's).
    """
    # Before the CheckpointHook (VERY_LOW) and any evaluation hook.
    priority = 'ABOVE_NORMAL'

    def __init__(self, num_samples=1024, batch_size=None):
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError('BNRecalibrationHook: num_samples must be a '
                             f'positive int, got {num_samples!r}')
        if batch_size is not None and (not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError('BNRecalibrationHook: batch_size must be a '
                             f'positive int, got {batch_size!r}')
        self.num_samples = num_samples
        self.batch_size = batch_size
        self._stale = False
        self.recalibrations = 0

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self._stale = True
        if self._checkpoint_due(runner, by_epoch=False):
            self._refresh(runner)

    def after_train_epoch(self, runner):
        if self._checkpoint_due(runner, by_epoch=True):
            self._refresh(runner)

    def before_val_epoch(self, runner):
        self._refresh(runner)

    def before_test_epoch(self, runner):
        self._refresh(runner)

    def after_train(self, runner):
        self._refresh(runner)

    def before_save_checkpoint(self, runner, checkpoint):
        """A save nobody announced (a hook of another kind, or a call of
        runner.save_checkpoint): recalibrate here in a single process; the
        checkpoint's state_dict was taken before this hook runs. In
        distributed training only rank 0 gets here, where the ranks cannot
        average their statistics, so it only says so."""
        if not self._stale:
            return
        if get_dist_info()[1] > 1:
            print_log('BNRecalibrationHook: a checkpoint saved at iteration '
                      f'{runner.iter} carries the running BN statistics of '
                      'training (an unscheduled save in distributed '
                      'training)', logger='current')
            return
        if self._refresh(runner):
            model = self._model(runner)
            state = checkpoint.get('state_dict')
            if state is not None:
                for name, buf in model.state_dict().items():
                    if name in state and self._is_bn_buffer(model, name):
                        state[name] = buf.detach().cpu()

    @staticmethod
    def _checkpoint_due(runner, by_epoch):
        """Whether a CheckpointHook saves at the end of this epoch
        (by_epoch) or iteration, by the rule the hook applies itself."""
        for hook in runner.hooks:
            if not isinstance(hook, CheckpointHook) or \
                    hook.by_epoch != by_epoch:
                continue
            if by_epoch:
                last = hook.save_last and hook.is_last_train_epoch(runner)
                due = last or hook.every_n_epochs(runner, hook.interval,
                                                  hook.save_begin)
            else:
                due = (hook.every_n_train_iters(runner, hook.interval,
                                                hook.save_begin)
                       or (hook.save_last and hook.is_last_train_iter(runner)))
            if due:
                return True
        return False

    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    @staticmethod
    def _is_bn_buffer(model, name):
        owner, _, attr = name.rpartition('.')
        if attr not in ('running_mean', 'running_var', 'num_batches_tracked'):
            return False
        return isinstance(model.get_submodule(owner), _BatchNorm)

    def _refresh(self, runner):
        """Recalibrate if training moved the weights since the last time;
        returns whether it did."""
        if not self._stale:
            return False
        self._stale = False
        model = self._model(runner)
        bns = batch_norms(model)
        if not bns:
            return False
        with fork_rng():
            self.recalibrate(model, bns, self._loader(runner), runner)
        self.recalibrations += 1
        return True

    def _batch_size(self, train):
        """The hook's batch size, else the train loader's (its batch
        sampler's when it has one)."""
        size = self.batch_size or train.batch_size or getattr(
            train.batch_sampler, 'batch_size', None)
        if not isinstance(size, int) or size < 1:
            raise ValueError(
                'BNRecalibrationHook: the train loader has no batch size '
                f'(its batch sampler is {type(train.batch_sampler).__name__});'
                ' give the hook one: dict(type=\'BNRecalibrationHook\', '
                'batch_size=...)')
        return size

    def _loader(self, runner):
        """A loader of about ``num_samples`` random training images (this
        rank's share), independent of the train loader's iterator and
        generator. Every batch on every rank has the same size, so the
        average of the batch statistics weighs each image alike, and there
        is no short last batch (one image in it stops a BatchNorm1d in
        training mode): up to ``world x batch size - 1`` of the images are
        left out, and a dataset smaller than one batch per rank is one
        batch each."""
        train = runner.train_dataloader
        dataset = train.dataset
        rank, world = get_dist_info()
        gen = torch.Generator()
        gen.manual_seed(epoch_seed(runner.seed, -1 - runner.iter, 0))
        per_rank = min(self.num_samples, len(dataset)) // world
        if per_rank < 1:
            raise ValueError(
                f'BNRecalibrationHook: {len(dataset)} training images '
                f'cannot give each of {world} processes one')
        size = min(self._batch_size(train), per_rank)
        per_rank -= per_rank % size
        order = torch.randperm(len(dataset), generator=gen)
        mine = order[rank:per_rank * world:world].tolist()
        workers = getattr(train, 'num_workers', 0)
        gen.manual_seed(epoch_seed(runner.seed, -1 - runner.iter, 1 + rank))
        return DataLoader(
            dataset, batch_size=size,
            sampler=mine, num_workers=workers,
            collate_fn=train.collate_fn, generator=gen,
            worker_init_fn=_worker_warnings if workers else None,
            pin_memory=getattr(train, 'pin_memory', False))

    @torch.no_grad()
    def recalibrate(self, model, bns, loader, runner=None):
        """Replace the running statistics of ``bns`` by the exact average
        of their batch statistics over ``loader``."""
        training = {m: m.training for m in model.modules()}
        momenta = [bn.momentum for bn in bns]
        try:
            model.eval()
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average
                bn.train()
            batches = 0
            for batch in loader:
                data = model.data_preprocessor(batch, True)
                model(**data, mode='tensor')
                batches += 1
            _, world = get_dist_info()
            if world > 1 and torch_dist.is_initialized():
                for bn in bns:
                    all_reduce(bn.running_mean, op='mean')
                    all_reduce(bn.running_var, op='mean')
        finally:
            for bn, momentum in zip(bns, momenta):
                bn.momentum = momentum
            for m, was in training.items():
                m.train(was)
        if runner is not None:
            print_log(f'BNRecalibrationHook: recomputed {len(bns)} BatchNorm '
                      f'layers from {batches} batches (iteration '
                      f'{runner.iter})', logger='current')
