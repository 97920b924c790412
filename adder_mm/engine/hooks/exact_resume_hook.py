"""ExactResumeHook: ``--resume`` continues as if training had not stopped."""
import functools
import hashlib

import torch
from mmengine.dataset import worker_init_fn as mmengine_worker_init_fn
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from adder_mm.models.layers import ADDER_LAYERS_KEY, count_adder_layers

from .rng import rng_states, set_rng_states

CHECKPOINT_KEY = 'rng_states'


def epoch_seed(seed, epoch, rank):
    """A 63-bit seed that depends on (seed, epoch, rank) only."""
    digest = hashlib.sha256(f'{seed}:{epoch}:{rank}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def _worker_warnings(worker_id, disable_subprocess_warning=False):
    """Worker start-up when the generators are torch's: torch seeds
    ``random``, NumPy and torch in each worker from the loader's base seed
    plus the worker id, and the base seed comes from the per-epoch
    generator that :class:`ExactResumeHook` gives the loader."""
    if disable_subprocess_warning and worker_id != 0:
        import warnings
        warnings.simplefilter('ignore')


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Make a resumed epoch-based run bit-identical to an uninterrupted one.

    MMEngine's checkpoints restore weights, optimizer, schedulers and the
    epoch, but not the random generators, so data augmentation after a
    resume draws other numbers. This hook

    - stores the generators' states (Python, NumPy, torch CPU and CUDA, per
      rank) at the end of every epoch and puts them into the checkpoint
      saved there (key ``'rng_states'``, with the epoch and iteration it
      belongs to); ``--resume`` restores them at the start of the next
      epoch;
    - seeds data loader workers from (seed, epoch, rank): the train loader
      gets a generator seeded so at every epoch start, from which torch
      derives each worker's seeds (MMEngine's default worker_init_fn, which
      gives the workers the same seeds every epoch, is replaced; a
      worker_init_fn of your own is kept), so runs with workers resume
      exactly too;
    - runs validation without touching the generators, so validating (or
      validating more often) does not change the training run, and the
      states stored at an epoch's end are those the next epoch starts with;
    - records in every checkpoint's meta how many adder layers the model has
      (``meta['adder_layers']``), so that the tools can refuse an AdderNet's
      weights in its CNN twin (same keys and shapes) and the reverse.

    Exact at the checkpoints an epoch-based config writes (epoch ends). A
    checkpoint saved mid-epoch, one from an older version or an
    iteration-based loop resumes as MMEngine does, with a one-line notice;
    so does a run with ``persistent_workers=True`` (the workers' streams
    outlive an epoch and cannot be restored).

    Costs a few kilobytes per checkpoint, and in distributed training one
    all-gather of those bytes per epoch.
    """
    # After hooks that draw in after_train_epoch (mmpretrain's PreciseBN,
    # ABOVE_NORMAL), before the CheckpointHook (VERY_LOW) that saves.
    priority = 'LOW'

    def __init__(self):
        self._epoch_end = None  # {'iter', 'epoch', 'ranks': [states]}
        self._loaded = None  # the 'rng_states' of a loaded checkpoint
        self._loaded_iter = None
        self._val_states = None

    # --- checkpoint side -------------------------------------------------
    def after_train_epoch(self, runner):
        states = rng_states()
        rank, world = get_dist_info()
        ranks = all_gather_object(states) if world > 1 else [states]
        self._epoch_end = dict(iter=runner.iter, epoch=runner.epoch + 1,
                               ranks=ranks)

    def before_save_checkpoint(self, runner, checkpoint):
        end = self._epoch_end
        if end is not None and end['iter'] == runner.iter:
            checkpoint[CHECKPOINT_KEY] = end
        # What kind of model wrote it: the tools refuse to load an
        # AdderNet's weights into its CNN twin (the same keys and shapes)
        # or the reverse.
        model = getattr(runner.model, 'module', runner.model)
        checkpoint.setdefault('meta', {})[ADDER_LAYERS_KEY] = \
            count_adder_layers(model)

    def after_load_checkpoint(self, runner, checkpoint):
        self._loaded = checkpoint.get(CHECKPOINT_KEY)
        self._loaded_iter = checkpoint.get('meta', {}).get('iter')

    # --- training side ---------------------------------------------------
    def before_train(self, runner):
        loader = runner.train_dataloader
        fn = getattr(loader, 'worker_init_fn', None)
        if (isinstance(fn, functools.partial)
                and fn.func is mmengine_worker_init_fn):
            loader.worker_init_fn = functools.partial(
                _worker_warnings,
                disable_subprocess_warning=fn.keywords.get(
                    'disable_subprocess_warning', False))

    def before_train_epoch(self, runner):
        if runner.iter > 0 and self._loaded_iter == runner.iter:
            self._restore(runner)
        self._loaded_iter = None
        loader = runner.train_dataloader
        rank, _ = get_dist_info()
        gen = torch.Generator()
        gen.manual_seed(epoch_seed(runner.seed, runner.epoch, rank))
        loader.generator = gen

    def _restore(self, runner):
        loaded, self._loaded = self._loaded, None
        rank, world = get_dist_info()
        why = None
        if loaded is None:
            why = ('the checkpoint has no random generator states (saved '
                   'mid-epoch, by an iteration-based loop or by an older '
                   'version)')
        elif loaded.get('iter') != runner.iter:
            why = 'its generator states belong to another iteration'
        elif len(loaded['ranks']) != world:
            why = (f'it was saved by {len(loaded["ranks"])} processes, this '
                   f'run has {world}')
        if why is None:
            set_rng_states(loaded['ranks'][rank])
            loader = runner.train_dataloader
            if (getattr(loader, 'num_workers', 0) > 0
                    and getattr(loader, 'persistent_workers', False)):
                print_log(
                    'ExactResumeHook: persistent_workers=True, so the data '
                    "workers' random streams restart here: augmentation "
                    'differs from an uninterrupted run (set '
                    'persistent_workers=False for an exact resume)',
                    logger='current')
        else:
            print_log(f'ExactResumeHook: resuming at iteration {runner.iter}'
                      f' without restoring the random generators: {why}; '
                      'training continues, not bit-identical to an '
                      'uninterrupted run', logger='current')

    # --- validation leaves the generators alone ---------------------------
    def before_val(self, runner):
        self._val_states = rng_states()

    def after_val(self, runner):
        if self._val_states is not None:
            set_rng_states(self._val_states)
            self._val_states = None


__all__ = ['ExactResumeHook', 'epoch_seed']
