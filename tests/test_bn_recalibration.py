"""BNRecalibrationHook on its own, with a stand-in runner: which BatchNorm
layers it recomputes, from which images, in which batches.

Whole training runs with the hook are in test_training_runs.py. The model
here is a BN layer over the raw input followed by a BatchNorm1d, so the
expected statistics are the input's own. Runtime: ~1 s.
"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from adder_mm.engine import BNRecalibrationHook


class TinyModel(nn.Module):
    """bn_in (BatchNorm2d on the input) -> mean over space -> bn_out
    (BatchNorm1d); ``norm_eval`` keeps bn_in in eval mode through train(),
    as mmpretrain's backbones do."""

    def __init__(self, channels=2, norm_eval=False):
        super().__init__()
        self.data_preprocessor = BaseDataPreprocessor()
        self.bn_in = nn.BatchNorm2d(channels)
        self.bn_out = nn.BatchNorm1d(channels)
        self.norm_eval = norm_eval

    def train(self, mode=True):
        super().train(mode)
        if mode and self.norm_eval:
            self.bn_in.eval()
        return self

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.bn_out(self.bn_in(inputs).mean((2, 3)))


def images(n, channels=2):
    """n images of 3x3 pixels, image i of channel c holding values around
    10 i + c (distinct per image, so a wrong sample set shows)."""
    gen = torch.Generator().manual_seed(0)
    base = 10.0 * torch.arange(n).view(n, 1, 1, 1) + torch.arange(
        channels).view(1, channels, 1, 1)
    return [dict(inputs=x)
            for x in base + torch.rand(n, channels, 3, 3, generator=gen)]


def runner_for(model, loader):
    return SimpleNamespace(model=model, train_dataloader=loader, seed=7,
                           iter=3)


def recalibrate(hook, runner):
    hook._stale = True  # as after a training iteration
    assert hook._refresh(runner)


def used_images(hook, runner):
    """The batches the hook's loader yields (its sample order is a fixed
    function of seed and iteration, so a second loader repeats it)."""
    return [batch['inputs'] for batch in hook._loader(runner)]


@pytest.mark.parametrize('n, batch_size, num_samples', [
    (7, 3, 1024),   # 7 % 3 == 1: a one-image last batch stopped BatchNorm1d
    (1438, 33, 1024),  # the digits training set, 1023 % 33 == 0
    (10, 4, 6),
    (2, 5, 1024),   # a dataset smaller than one batch: one batch of 2
])
def test_equal_batches_and_exact_average(n, batch_size, num_samples):
    data = images(n)
    loader = DataLoader(data, batch_size=batch_size)
    model = TinyModel()
    hook = BNRecalibrationHook(num_samples=num_samples)
    runner = runner_for(model, loader)
    batches = used_images(hook, runner)
    sizes = {len(b) for b in batches}
    assert len(sizes) == 1, sizes
    size = sizes.pop()
    used = torch.cat(batches)
    assert size == min(batch_size, n)
    assert min(num_samples, n) - size < len(used) <= min(num_samples, n)
    assert len({float(x[0, 0, 0]) for x in used}) == len(used)  # distinct

    model.train()
    recalibrate(hook, runner)
    assert model.training and model.bn_in.training  # modes restored
    expected = used.double().mean((0, 2, 3))
    torch.testing.assert_close(model.bn_in.running_mean.double(), expected,
                               rtol=1e-6, atol=0)
    assert model.bn_out.momentum == 0.1  # restored after the average


def test_frozen_batch_norms_keep_their_statistics():
    """norm_eval / frozen_stages: a BN that training keeps in eval mode
    keeps its (pretrained) statistics; the others are recomputed."""
    model = TinyModel(norm_eval=True)
    with torch.no_grad():
        model.bn_in.running_mean.fill_(0.5)
        model.bn_in.running_var.fill_(2.0)
        model.bn_out.running_mean.fill_(0.5)
    hook = BNRecalibrationHook(num_samples=8)
    runner = runner_for(model, DataLoader(images(8), batch_size=4))
    model.train()
    recalibrate(hook, runner)
    assert torch.equal(model.bn_in.running_mean, torch.full((2,), 0.5))
    assert torch.equal(model.bn_in.running_var, torch.full((2,), 2.0))
    assert not torch.equal(model.bn_out.running_mean, torch.full((2,), 0.5))
    assert model.training and not model.bn_in.training


def test_batch_size_from_the_batch_sampler():
    """A train loader built with a batch_sampler has batch_size None."""
    data = images(9)
    loader = DataLoader(data, batch_sampler=BatchSampler(
        SequentialSampler(data), batch_size=4, drop_last=False))
    hook = BNRecalibrationHook(num_samples=9)
    runner = runner_for(TinyModel(), loader)
    assert [len(b) for b in used_images(hook, runner)] == [4, 4]

    class NoSize:  # a batch sampler that does not say its size
        def __iter__(self):
            return iter([[0, 1], [2, 3]])

        def __len__(self):
            return 2

    loader = DataLoader(data, batch_sampler=NoSize())
    runner = runner_for(TinyModel(), loader)
    with pytest.raises(ValueError, match='no batch size.*NoSize.*batch_size'):
        used_images(hook, runner)
    hook = BNRecalibrationHook(num_samples=9, batch_size=3)
    assert [len(b) for b in used_images(hook, runner)] == [3, 3, 3]
