"""AdderOptimWrapperConstructor: the paper's adaptive learning rate (Eq. 13).

The expected updates are computed here from the formula with plain autograd,
never through the constructor. Runtime: ~25 s on 2 CPU cores (DDP ~10 s).
"""
import copy
import math
import pickle
import socket
import time
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.dataset import BaseDataset
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from mmengine.optim.optimizer import amp_optimizer_wrapper
from mmengine.registry import DATASETS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.runner import Runner

import adder_mm  # noqa: F401  (registration)
from adder_mm.engine import AdderGradNormalizer, AdderOptimWrapperConstructor
from adder_mm.models import AdderConv2d


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # The tensors here are tiny; on a shared 2-core machine OpenMP threads
    # spinning against other processes make each step ~300x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Written out by hand so the test does not rely on the constructor's search.
ADDER_WEIGHTS = ('layer1.0.weight', 'layer2.0.weight')
LR = 0.1


class TinyAdderNet(nn.Module):
    """Ordinary stem, two adder (or conv) blocks with BN, linear classifier.

    Input [N, 3, 8, 8] -> logits [N, 3].
    """

    def __init__(self, adder=True):
        super().__init__()
        conv = AdderConv2d if adder else nn.Conv2d
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(
            conv(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
            nn.ReLU())
        self.layer2 = nn.Sequential(
            conv(6, 8, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean((2, 3)))


def make_model(adder=True, seed=0):
    torch.manual_seed(seed)
    return TinyAdderNet(adder)


def make_eval_model(x):
    """A model whose BN layers use the statistics of batch x, frozen.

    In eval mode a batch split in chunks gives exactly the mean loss (and
    gradient) of the whole batch; fresh running stats (0, 1) would leave the
    adder outputs (large negative distances) unnormalised and ReLU would
    zero every gradient.
    """
    model = make_model()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.  # running stats := this batch's stats
    with torch.no_grad():
        model(x)
    return model.eval()


def make_data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 8, 8, generator=g),
            torch.randint(0, 3, (n, ), generator=g))


def adder_cfg(eta=0.2, **optimizer):
    optimizer = dict(type='SGD', lr=LR, **optimizer)
    return dict(
        constructor='AdderOptimWrapperConstructor',
        optimizer=optimizer,
        paramwise_cfg=dict(adder_eta=eta))


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def grads_by_hand(model, x, y, chunks=1):
    """Gradient of the mean loss over equal chunks, on a copy of model."""
    m = copy.deepcopy(model)
    names, params = zip(*m.named_parameters())
    loss = sum(
        F.cross_entropy(m(xc), yc)
        for xc, yc in zip(x.chunk(chunks), y.chunk(chunks))) / chunks
    return dict(zip(names, torch.autograd.grad(loss, params)))


def paper_scale(g, eta):
    """alpha_l = eta * sqrt(k) / ||g_l||_2 (paper Eq. 13)."""
    return eta * math.sqrt(g.numel()) / g.pow(2).sum().sqrt()


def paper_sgd_step(model, x, y, eta=0.2, chunks=1):
    """Expected parameters after one plain SGD step with the paper's rule."""
    grads = grads_by_hand(model, x, y, chunks)
    out = {}
    for name, p in model.named_parameters():
        g = grads[name]
        if name in ADDER_WEIGHTS:
            assert g.abs().max() > 0, f'{name}: zero gradient, vacuous test'
            g = paper_scale(g, eta) * g
        out[name] = p.detach() - LR * g
    return out


def train_step(model, optim_wrapper, x, y, chunks=1):
    for xc, yc in zip(x.chunk(chunks), y.chunk(chunks)):
        optim_wrapper.update_params(F.cross_entropy(model(xc), yc))


def assert_params(model, expected):
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], msg=name)


def test_registered_in_root_and_mmpretrain_scope():
    assert OPTIM_WRAPPER_CONSTRUCTORS.get(
        'AdderOptimWrapperConstructor') is AdderOptimWrapperConstructor
    from mmpretrain.registry import (
        OPTIM_WRAPPER_CONSTRUCTORS as PRETRAIN_CONSTRUCTORS,
    )
    assert PRETRAIN_CONSTRUCTORS.get(
        'AdderOptimWrapperConstructor') is AdderOptimWrapperConstructor


def test_one_sgd_step_matches_paper_rule():
    model, (x, y) = make_model(), make_data()
    expected = paper_sgd_step(model, x, y, eta=0.2)
    plain = {n: p.detach() - LR * g
             for (n, p), g in zip(model.named_parameters(),
                                  grads_by_hand(model, x, y).values())}
    # The rule must change the adder updates, or this test proves nothing.
    for name in ADDER_WEIGHTS:
        assert not torch.allclose(expected[name], plain[name], rtol=1e-3)

    optim_wrapper = build_optim_wrapper(model, adder_cfg(eta=0.2))
    train_step(model, optim_wrapper, x, y)
    assert_params(model, expected)
    normalizer = optim_wrapper.adder_grad_normalizer
    assert normalizer.num_steps == 1
    assert [n + '.weight' for n in normalizer.names] == list(ADDER_WEIGHTS)


def test_eta_defaults_to_0_2_and_scales_the_update():
    model, (x, y) = make_model(), make_data()
    expected = paper_sgd_step(model, x, y, eta=0.2)
    optim_wrapper = build_optim_wrapper(
        model,
        dict(
            constructor='AdderOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=LR)))
    train_step(model, optim_wrapper, x, y)
    assert_params(model, expected)

    model2 = make_model()
    expected = paper_sgd_step(model2, x, y, eta=0.05)
    train_step(model2, build_optim_wrapper(model2, adder_cfg(eta=0.05)), x, y)
    assert_params(model2, expected)


def test_non_adder_params_see_the_default_update():
    x, y = make_data()
    ref, model = make_model(), make_model()
    ref_wrapper = build_optim_wrapper(
        ref, dict(optimizer=dict(type='SGD', lr=LR, momentum=0.9,
                                 weight_decay=1e-2)))
    optim_wrapper = build_optim_wrapper(
        model, adder_cfg(momentum=0.9, weight_decay=1e-2))
    train_step(ref, ref_wrapper, x, y)
    train_step(model, optim_wrapper, x, y)
    changed = set()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if name in ADDER_WEIGHTS:
            changed.add(name)
            assert not torch.equal(p, q)
        else:
            assert torch.equal(p, q), name
    assert changed == set(ADDER_WEIGHTS)


@pytest.mark.parametrize('paramwise_cfg', [None, dict(norm_decay_mult=0.)])
def test_model_without_adders_trains_as_default(paramwise_cfg):
    x, y = make_data()
    ref, model = make_model(adder=False), make_model(adder=False)
    optimizer = dict(type='SGD', lr=LR, momentum=0.9, weight_decay=1e-2)
    ref_wrapper = build_optim_wrapper(
        ref, dict(optimizer=optimizer, paramwise_cfg=paramwise_cfg))
    adder_paramwise = dict(adder_eta=0.2, **(paramwise_cfg or {}))
    optim_wrapper = build_optim_wrapper(
        model,
        dict(
            constructor='AdderOptimWrapperConstructor',
            optimizer=optimizer,
            paramwise_cfg=adder_paramwise))
    assert optim_wrapper.adder_grad_normalizer is None
    assert not optim_wrapper.optimizer._optimizer_step_pre_hooks
    for _ in range(3):
        train_step(ref, ref_wrapper, x, y)
        train_step(model, optim_wrapper, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_momentum_and_weight_decay_on_top_of_normalised_grad():
    model, (x, y) = make_model(), make_data()
    momentum, wd, eta = 0.9, 1e-2, 0.2
    hand = copy.deepcopy(model)
    optim_wrapper = build_optim_wrapper(
        model, adder_cfg(eta=eta, momentum=momentum, weight_decay=wd))
    bufs = {}
    for _ in range(2):
        grads = grads_by_hand(hand, x, y)
        with torch.no_grad():
            for name, p in hand.named_parameters():
                g = grads[name]
                if name in ADDER_WEIGHTS:
                    g = paper_scale(g, eta) * g
                d = g + wd * p  # decay added after normalisation
                bufs[name] = d if name not in bufs else momentum * bufs[
                    name] + d
                p -= LR * bufs[name]
        train_step(model, optim_wrapper, x, y)
        assert_params(model, params_of(hand))


def test_after_gradient_clipping():
    # Clipping shrinks all gradients by one factor; the adder ones are then
    # normalised (factor gone), the others stay clipped.
    model, (x, y) = make_model(), make_data()
    grads = grads_by_hand(model, x, y)
    total = torch.stack([g.norm() for g in grads.values()]).norm()
    max_norm = 1e-3
    clip = max_norm / (total + 1e-6)
    expected = {}
    for name, p in model.named_parameters():
        g = grads[name]
        g = paper_scale(g, 0.2) * g if name in ADDER_WEIGHTS else clip * g
        expected[name] = p.detach() - LR * g
    cfg = adder_cfg()
    cfg['clip_grad'] = dict(max_norm=max_norm)
    train_step(model, build_optim_wrapper(model, cfg), x, y)
    assert_params(model, expected)


def test_accumulation_same_as_one_big_batch():
    # BN in eval mode so that the half batches see the same statistics as
    # the whole batch: the mean loss, hence the gradient, is then the same.
    x, y = make_data()
    big, acc = make_eval_model(x), make_eval_model(x)
    expected = paper_sgd_step(big, x, y, chunks=2)
    train_step(big, build_optim_wrapper(big, adder_cfg()), x, y)
    cfg = adder_cfg()
    cfg['accumulative_counts'] = 2
    optim_wrapper = build_optim_wrapper(acc, cfg)
    train_step(acc, optim_wrapper, x, y, chunks=2)
    assert optim_wrapper.adder_grad_normalizer.num_steps == 1
    assert_params(acc, expected)
    assert_params(big, expected)


def build_cpu_amp_wrapper(model, monkeypatch, init_scale=2.**12, **extra):
    """MMEngine's AmpOptimWrapper with a CPU GradScaler.

    AmpOptimWrapper asserts an accelerator and builds a CUDA GradScaler;
    on this CPU-only machine we pass the assert and swap in the CPU scaler,
    keeping AmpOptimWrapper's own backward/step code path.
    """
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available',
                        lambda: True)
    cfg = adder_cfg()
    cfg.update(type='AmpOptimWrapper', **extra)
    with warnings.catch_warnings():  # 'CUDA not available' from its scaler
        warnings.simplefilter('ignore', UserWarning)
        optim_wrapper = build_optim_wrapper(model, cfg)
    assert type(optim_wrapper) is amp_optimizer_wrapper.AmpOptimWrapper
    optim_wrapper.loss_scaler = torch.amp.GradScaler(
        'cpu', init_scale=init_scale)
    return optim_wrapper


def test_amp_loss_scaling_same_update(monkeypatch):
    model, (x, y) = make_model(), make_data()
    expected = paper_sgd_step(model, x, y)
    optim_wrapper = build_cpu_amp_wrapper(model, monkeypatch)
    train_step(model, optim_wrapper, x, y)
    assert optim_wrapper.loss_scaler.get_scale() == 2.**12  # no inf seen
    assert optim_wrapper.adder_grad_normalizer.num_steps == 1
    assert_params(model, expected)


def test_amp_with_accumulation_and_clipping(monkeypatch):
    x, y = make_data()
    model = make_eval_model(x)
    expected = paper_sgd_step(model, x, y, chunks=2)
    optim_wrapper = build_cpu_amp_wrapper(
        model, monkeypatch, accumulative_counts=2,
        clip_grad=dict(max_norm=1e6))  # clip path unscales first
    train_step(model, optim_wrapper, x, y, chunks=2)
    assert_params(model, expected)


def test_amp_skipped_step_is_not_normalised_or_counted(monkeypatch):
    model, (x, y) = make_model(), make_data()
    optim_wrapper = build_cpu_amp_wrapper(model, monkeypatch)
    normalizer = optim_wrapper.adder_grad_normalizer
    calls = []
    optim_wrapper.optimizer.register_step_pre_hook(
        lambda *args: calls.append(1))
    before = params_of(model)
    optim_wrapper.backward(F.cross_entropy(model(x), y))
    model.fc.bias.grad[0] = float('inf')
    adder_grad = model.layer1[0].weight.grad.clone()
    optim_wrapper.step()
    assert calls == [] and normalizer.num_steps == 0
    assert optim_wrapper.loss_scaler.get_scale() < 2.**12
    # unscale_ divided by the scale; the normaliser did not touch it.
    torch.testing.assert_close(model.layer1[0].weight.grad,
                               adder_grad / 2.**12)
    assert_params(model, before)


def test_non_finite_grad_left_alone():
    w = nn.Parameter(torch.ones(2, 3))
    normalizer = AdderGradNormalizer([('w', w, 0.2)])
    w.grad = torch.tensor([[1., float('nan'), 0.], [0., 0., 0.]])
    normalizer(None, (), {})
    assert torch.equal(w.grad.isnan(), torch.tensor([[0, 1, 0], [0, 0, 0]],
                                                    dtype=torch.bool))
    assert w.grad[0, 0] == 1.
    w.grad = torch.zeros(2, 3)  # zero norm: stays zero, no nan
    normalizer(None, (), {})
    assert torch.equal(w.grad, torch.zeros(2, 3))


def test_normalizer_mixed_dtypes_missing_grad_and_attach_errors():
    a = nn.Parameter(torch.randn(4, 2, 3, 3))
    b = nn.Parameter(torch.randn(6, 4, 1, 1, dtype=torch.float64))
    c = nn.Parameter(torch.randn(2, 2, 1, 1))  # no gradient this step
    normalizer = AdderGradNormalizer([('a', a, 0.2), ('b', b, 0.5),
                                      ('c', c, 0.2), ('a_again', a, 0.2)])
    assert normalizer.names == ['a', 'b', 'c']  # shared weight once
    ga, gb = torch.randn_like(a), torch.randn_like(b)
    a.grad, b.grad = ga.clone(), gb.clone()
    optimizer = torch.optim.SGD([a, b, c], lr=1.)
    normalizer.attach(optimizer)
    optimizer.step()
    torch.testing.assert_close(a.grad, paper_scale(ga, 0.2) * ga)
    torch.testing.assert_close(b.grad, paper_scale(gb, 0.5) * gb)
    assert b.grad.dtype == torch.float64 and c.grad is None
    with pytest.raises(RuntimeError, match='already attached'):
        normalizer.attach(optimizer)
    normalizer.detach()
    assert not optimizer._optimizer_step_pre_hooks
    with pytest.raises(ValueError, match=r"not optimised.*'c'"):
        normalizer.attach(torch.optim.SGD([a, b], lr=1.))
    with pytest.raises(ValueError, match='eps'):
        AdderGradNormalizer([('a', a, 0.2)], eps=-1.)
    with pytest.raises(TypeError, match='not a tensor'):
        AdderGradNormalizer([('a', 'weight', 0.2)])


def test_half_precision_grad_norm_does_not_overflow():
    w = nn.Parameter(torch.ones(64, 64, 3, 3, dtype=torch.float16))
    # sum of squares 3.7e8 overflows fp16 (max 65504); the norm must not.
    w.grad = torch.full_like(w, 100.)
    AdderGradNormalizer([('w', w, 0.2)])(None, (), {})
    assert w.grad.dtype == torch.float16
    # Uniform gradient: every element becomes eta * sqrt(k) / sqrt(k) = eta.
    torch.testing.assert_close(w.grad, torch.full_like(w, 0.2))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_scale_is_applied_in_float32(dtype):
    """alpha = eta sqrt(k) / max(||g||, eps) exceeds float16 for small
    gradients (and is 5.6e12 for a zero one): cast to float16 it became
    inf, and weights went inf or nan. The scaled gradient itself is small."""
    w = nn.Parameter(torch.ones(64, 64, 3, 3, dtype=dtype))
    normalizer = AdderGradNormalizer([('w', w, 0.2)])
    w.grad = torch.zeros_like(w)
    normalizer(None, (), {})
    assert torch.equal(w.grad, torch.zeros_like(w))
    g = 2e-6 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    w.grad = g.to(dtype)
    normalizer(None, (), {})
    assert w.grad.dtype == dtype and torch.isfinite(w.grad).all()
    expected = paper_scale(g.to(dtype).float(), 0.2) * g.to(dtype).float()
    # one rounding to the dtype, no rounding of the scale to it
    torch.testing.assert_close(w.grad.float(), expected, rtol=2 ** -8,
                               atol=0)


@pytest.mark.parametrize('kwargs, match', [
    (dict(eps=float('inf')), 'eps'),    # every update would be 0
    (dict(eps=1e-50), 'eps'),           # 0 in float32: 0 * inf = nan
    (dict(eps=1e300), 'eps'),           # overflows float32 at the step
    (dict(eta=1e38), 'overflows'),      # eta sqrt(k) overflows float32
])
def test_scales_stay_within_float32(kwargs, match):
    w = nn.Parameter(torch.ones(4, 4, 3, 3))
    with pytest.raises(ValueError, match=match):
        AdderGradNormalizer([('w', w, kwargs.get('eta', 0.2))],
                            eps=kwargs.get('eps', 1e-12))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, state, x, y, out_path):
    torch.set_num_threads(1)
    dist.init_process_group(
        'gloo',
        init_method=f'tcp://127.0.0.1:{port}',
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60))
    try:
        model = TinyAdderNet()
        model.load_state_dict(state)
        model.eval()
        ddp = nn.parallel.DistributedDataParallel(model)
        optim_wrapper = build_optim_wrapper(ddp, adder_cfg())
        xs, ys = x.chunk(world_size)[rank], y.chunk(world_size)[rank]
        with optim_wrapper.optim_context(ddp):
            loss = F.cross_entropy(ddp(xs), ys)
        optim_wrapper.update_params(loss)
        if rank == 0:
            torch.save(
                dict(
                    params=params_of(model),
                    names=optim_wrapper.adder_grad_normalizer.names), out_path)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_same_update(tmp_path):
    x, y = make_data()
    model = make_eval_model(x)
    expected = paper_sgd_step(model, x, y, chunks=2)
    out_path = tmp_path / 'rank0.pth'
    ctx = mp.start_processes(
        _ddp_worker,
        args=(2, _free_port(), model.state_dict(), x, y, str(out_path)),
        nprocs=2,
        join=False,
        start_method='spawn')
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail('DDP workers did not finish in 120 s')
    result = torch.load(out_path)
    # Names come from the unwrapped model, as the parent's param names do.
    assert [n + '.weight' for n in result['names']] == list(ADDER_WEIGHTS)
    for name, value in result['params'].items():
        torch.testing.assert_close(value, expected[name], msg=name)


def test_wrapped_model_found_through_module():

    class Wrapper(nn.Module):

        def __init__(self, module):
            super().__init__()
            self.module = module

    model, (x, y) = make_model(), make_data()
    expected = paper_sgd_step(model, x, y)
    optim_wrapper = build_optim_wrapper(Wrapper(Wrapper(model)), adder_cfg())
    assert optim_wrapper.adder_grad_normalizer.names == [
        'module.layer1.0', 'module.layer2.0'
    ]
    train_step(model, optim_wrapper, x, y)
    assert_params(model, expected)


def test_paramwise_options_kept_and_per_layer_eta():
    model = make_model()
    base = dict(type='SGD', lr=LR, weight_decay=1e-2)
    options = dict(
        norm_decay_mult=0., bias_lr_mult=2.,
        custom_keys={'stem': dict(lr_mult=0.5)})
    ref = build_optim_wrapper(
        model, dict(optimizer=base, paramwise_cfg=copy.deepcopy(options)))
    adder_options = copy.deepcopy(options)
    adder_options['custom_keys']['layer1'] = dict(adder_eta=0.05)
    adder_options['adder_eta'] = 0.3
    constructor_cfg = dict(
        constructor='AdderOptimWrapperConstructor',
        optimizer=base,
        paramwise_cfg=adder_options)
    optim_wrapper = build_optim_wrapper(model, copy.deepcopy(constructor_cfg))

    def groups(ow):
        return [{k: v for k, v in g.items() if k != 'params'}
                for g in ow.optimizer.param_groups]

    # 'layer1' held only adder_eta, so BN in layer1 keeps norm_decay_mult.
    assert groups(optim_wrapper) == groups(ref)
    bn1_group = optim_wrapper.optimizer.param_groups[
        [n for n, _ in model.named_parameters()].index('layer1.1.weight')]
    assert bn1_group['weight_decay'] == 0.
    assert optim_wrapper.adder_grad_normalizer.etas == [0.05, 0.3]
    assert constructor_cfg['paramwise_cfg']['custom_keys']['layer1'] == dict(
        adder_eta=0.05), 'the user config must not be modified'

    x, y = make_data()
    grads = grads_by_hand(model, x, y)
    expected = {}
    for name, p in model.named_parameters():
        group = optim_wrapper.optimizer.param_groups[list(
            dict(model.named_parameters())).index(name)]
        g = grads[name]
        if name in ADDER_WEIGHTS:
            g = paper_scale(g, 0.05 if 'layer1' in name else 0.3) * g
        g = g + group['weight_decay'] * p.detach()
        expected[name] = p.detach() - group['lr'] * g
    train_step(model, optim_wrapper, x, y)
    assert_params(model, expected)


def test_frozen_adder_layer_is_skipped():
    model = make_model()
    model.layer1[0].weight.requires_grad_(False)
    optim_wrapper = build_optim_wrapper(
        model,
        dict(
            constructor='AdderOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=LR),
            paramwise_cfg=dict(bias_lr_mult=1.)))
    assert optim_wrapper.adder_grad_normalizer.names == ['layer2.0']


@pytest.mark.parametrize('paramwise_cfg, error', [
    (dict(adder_eta=-0.1), ValueError),
    (dict(adder_eta='0.2'), ValueError),
    (dict(adder_eta=float('nan')), ValueError),
    (dict(adder_eat=0.2), ValueError),
    (dict(adder_eps=0.), ValueError),
    (dict(adder_eps=float('inf')), ValueError),
    (dict(adder_eps=1e-50), ValueError),
    (dict(adder_eta=1e39), ValueError),
    (dict(adder_log='yes'), TypeError),
    (dict(custom_keys={'layer1': dict(adder_eta=0.)}), ValueError),
    (dict(custom_keys={'layer1': dict(adder_log=True)}), ValueError),
    ([('adder_eta', 0.2)], TypeError),
])
def test_bad_config_is_rejected(paramwise_cfg, error):
    with pytest.raises(error, match='adder|paramwise_cfg'):
        AdderOptimWrapperConstructor(
            dict(optimizer=dict(type='SGD', lr=LR)), paramwise_cfg)


def test_logging_off_by_default_and_on_when_asked():
    hub = MessageHub.get_instance('test_adder_logging')
    model, (x, y) = make_model(), make_data()
    train_step(model, build_optim_wrapper(model, adder_cfg()), x, y)
    assert not [k for k in hub.log_scalars if 'adder' in k]

    model = make_model()
    grads = grads_by_hand(model, x, y)
    cfg = adder_cfg()
    cfg['paramwise_cfg']['adder_log'] = True
    train_step(model, build_optim_wrapper(model, cfg), x, y)
    for name in ADDER_WEIGHTS:
        key = 'train/adder_scale/' + name[:-len('.weight')]
        assert hub.get_scalar(key).current() == pytest.approx(
            paper_scale(grads[name], 0.2).item(), rel=1e-5)


def test_state_dict_round_trip_keeps_the_rule(tmp_path):
    x, y = make_data()
    model = make_model()
    cfg = adder_cfg(momentum=0.9, weight_decay=1e-2)
    optim_wrapper = build_optim_wrapper(model, cfg)
    train_step(model, optim_wrapper, x, y)
    torch.save(
        dict(model=model.state_dict(), optim=optim_wrapper.state_dict()),
        tmp_path / 'ckpt.pth')
    train_step(model, optim_wrapper, x, y)  # the run without interruption

    resumed = make_model(seed=5)
    ckpt = torch.load(tmp_path / 'ckpt.pth')  # weights_only default
    resumed.load_state_dict(ckpt['model'])
    resumed_wrapper = build_optim_wrapper(resumed, cfg)
    resumed_wrapper.load_state_dict(ckpt['optim'])
    train_step(resumed, resumed_wrapper, x, y)
    assert resumed_wrapper.adder_grad_normalizer.num_steps == 1
    for p, q in zip(resumed.parameters(), model.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize('how', ['deepcopy', 'pickle'])
def test_copied_wrapper_keeps_the_rule(how):
    model, (x, y) = make_model(), make_data()
    optim_wrapper = build_optim_wrapper(model, adder_cfg())
    holder = nn.ModuleList([model])  # copy model and optimizer together
    if how == 'deepcopy':
        holder2, wrapper2 = copy.deepcopy((holder, optim_wrapper))
    else:
        holder2, wrapper2 = pickle.loads(
            pickle.dumps((holder, optim_wrapper)))
    model2 = holder2[0]
    assert wrapper2.adder_grad_normalizer.params[0] is model2.layer1[0].weight
    assert len(wrapper2.optimizer._optimizer_step_pre_hooks) == 1
    expected = paper_sgd_step(model2, x, y)
    train_step(model2, wrapper2, x, y)
    assert_params(model2, expected)
    assert optim_wrapper.adder_grad_normalizer.num_steps == 0
    assert len(optim_wrapper.optimizer._optimizer_step_pre_hooks) == 1


# --------------------------------------------------------------------------
# Config round trip through Runner.


@MODELS.register_module(name='AdderOptimTestNet', force=True)
class _RunnerNet(BaseModel):

    def __init__(self):
        super().__init__()
        self.net = make_model()

    def forward(self, inputs, labels=None, sample_idx=None, mode='tensor'):
        logits = self.net(inputs)
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return logits


@DATASETS.register_module(name='AdderOptimTestData', force=True)
class _RunnerData(BaseDataset):

    def __init__(self, n=8):
        self.n = n
        super().__init__(serialize_data=False, lazy_init=False)

    def load_data_list(self):
        x, y = make_data(self.n)
        return [dict(inputs=x[i], labels=y[i]) for i in range(self.n)]


CONFIG = """
custom_imports = dict(imports=['adder_mm'], allow_failed_imports=False)
default_scope = {scope!r}
experiment_name = {name!r}
model = dict(type='AdderOptimTestNet')
train_dataloader = dict(
    dataset=dict(type='AdderOptimTestData'),
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    batch_size=4, num_workers=0)
train_cfg = dict(by_epoch=False, max_iters={iters})
optim_wrapper = dict(
    constructor='AdderOptimWrapperConstructor',
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4),
    paramwise_cfg=dict(adder_eta=0.2, adder_log=True,
                       custom_keys={{'net.layer1': dict(adder_eta=0.1)}}))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False))
log_level = 'WARNING'
"""


def _runner(tmp_path, scope, iters, name, resume=False):
    cfg_path = tmp_path / f'{name}.py'
    cfg_path.write_text(CONFIG.format(scope=scope, name=name, iters=iters))
    cfg = Config.fromfile(str(cfg_path))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.resume = resume
    return Runner.from_cfg(cfg)


@pytest.mark.parametrize('scope', ['mmpretrain', None])
def test_config_builds_and_trains_through_runner(tmp_path, scope):
    tag = f'adder_optim_{scope}_{tmp_path.name}'
    runner = _runner(tmp_path, scope, 2, tag)
    runner.train()
    normalizer = runner.optim_wrapper.adder_grad_normalizer
    assert normalizer.num_steps == 2
    assert normalizer.names == ['net.layer1.0', 'net.layer2.0']
    assert normalizer.etas == [0.1, 0.2]
    assert runner.message_hub.get_scalar(
        'train/adder_scale/net.layer1.0').current() > 0

    # Resume from the iteration-2 checkpoint: the rule is still attached.
    resumed = _runner(tmp_path, scope, 3, tag + '_resume', resume=True)
    resumed.train()
    assert resumed.iter == 3
    assert resumed.optim_wrapper.adder_grad_normalizer.num_steps == 1
    assert len(resumed.optim_wrapper.optimizer._optimizer_step_pre_hooks) == 1
