"""Checkpoints under torch >= 2.6 (weights_only=True by default).

Importing adder_mm allow-lists exactly the classes MMEngine's own checkpoints
pickle (HistoryBuffer, numpy arrays/dtypes/scalars): runner checkpoints resume,
and a pickle that references any other callable is still refused.
"""
import builtins
import copy
import operator
import os
import pickle
import subprocess
import uuid

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint
from torch.utils.data import Dataset

import adder_mm  # noqa: F401  (registers the allow-list)
from adder_mm.models import AdderConv2d
from adder_mm.utils import checkpoint_safe_globals
from adder_mm.utils.checkpoint import history_buffer_getattr


@pytest.fixture(autouse=True)
def _default_weights_only(monkeypatch):
    # These variables would change what torch.load's default does.
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    monkeypatch.delenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', raising=False)


@pytest.fixture
def restore_default_scope():
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)


# ------------------------------------------------- a tiny runner training
class TinyData(Dataset):
    """12 random 3x6x6 images in 3 classes (made here, no files)."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(12, 3, 6, 6, generator=gen)
        self.y = torch.arange(12) % 3

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


class TinyAdderNet(BaseModel):

    def __init__(self):
        super().__init__()
        self.adder = AdderConv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, inputs, labels=None, mode='tensor'):
        feat = self.bn(self.adder(inputs)).mean((2, 3))
        logits = self.fc(feat)
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, labels))
        return logits


def _runner(work_dir, max_epochs, name, **kwargs):
    return Runner(
        model=TinyAdderNet(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=TinyData(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
            batch_size=4,
            num_workers=0),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        optim_wrapper=dict(
            optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        # explicit end: by default it is max_epochs, which differs between
        # the saving (1) and the resuming (2) runner
        param_scheduler=dict(type='MultiStepLR', milestones=[1], gamma=0.5,
                             begin=0, end=10),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=1),
            logger=dict(type='LoggerHook', interval=1)),
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        randomness=dict(seed=0),
        # a fresh name: MMLogger/Visualizer instances are global by name
        experiment_name=f'{name}-{uuid.uuid4().hex[:8]}',
        **kwargs)


ITERS_PER_EPOCH = 3  # 12 samples / batch 4


class CountIters(Hook):
    """Counts the training iterations this runner itself ran."""

    def __init__(self):
        self.count = 0

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.count += 1


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """epoch_1.pth saved by an MMEngine Runner after one epoch on CPU."""
    saved = DefaultScope._instance_dict.copy()
    work_dir = tmp_path_factory.mktemp('runner')
    runner = _runner(work_dir, 1, 'save')
    runner.train()
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)
    path = work_dir / 'epoch_1.pth'
    assert path.is_file()
    return path, {k: v.clone() for k, v in runner.model.state_dict().items()}


def test_runner_checkpoint_loads_with_default_torch_load(runner_checkpoint):
    path, state = runner_checkpoint
    ckpt = torch.load(path)  # weights_only=True is torch's default
    assert isinstance(ckpt['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)
    for k, v in state.items():
        assert torch.equal(ckpt['state_dict'][k], v), k
    assert 'state' in ckpt['optimizer'] and ckpt['param_schedulers']
    assert ckpt['meta']['epoch'] == 1 and ckpt['meta']['iter'] == 3
    # Everything it pickles is allow-listed (static scan of the pickle).
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []


def test_runner_checkpoint_needs_the_allow_list(runner_checkpoint):
    """Without adder_mm's allow-list, the same checkpoint is refused."""
    path, _ = runner_checkpoint
    registered = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
            torch.load(path)
    finally:
        torch.serialization.add_safe_globals(registered)
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in unsafe
    assert any(name.endswith('_reconstruct') for name in unsafe)
    # every global it needs is one of ours
    ours = {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__name__}'
            for g in checkpoint_safe_globals()}
    assert set(unsafe) <= ours, set(unsafe) - ours
    # HistoryBuffer pickles its statistics methods via getattr
    assert 'builtins.getattr' in unsafe


def test_runner_resumes_and_continues_training(runner_checkpoint, tmp_path,
                                               restore_default_scope):
    path, state = runner_checkpoint
    counter = CountIters()
    runner = _runner(tmp_path, 2, 'resume', load_from=str(path), resume=True,
                     custom_hooks=[counter])
    runner.train()
    assert counter.count == ITERS_PER_EPOCH  # only the second epoch ran
    assert runner.epoch == 2
    assert runner.iter == 2 * ITERS_PER_EPOCH
    # the restored message hub carries the first epoch's loss history on
    history = runner.message_hub.get_scalar('train/loss').data[0]
    assert len(history) == 2 * ITERS_PER_EPOCH
    # training continued from the saved weights and changed them
    assert not torch.equal(runner.model.state_dict()['adder.weight'],
                           state['adder.weight'])
    # the milestone after epoch 1 halved the lr; the resumed epoch 2 used
    # the restored lr, not the config's 0.01
    lrs = runner.message_hub.get_scalar('train/lr').data[0]
    assert lrs.tolist() == pytest.approx([0.01] * 3 + [0.005] * 3)
    assert (tmp_path / 'epoch_2.pth').is_file()
    torch.load(tmp_path / 'epoch_2.pth')


def test_runner_load_from_without_resume(runner_checkpoint, tmp_path,
                                         restore_default_scope):
    path, state = runner_checkpoint
    runner = _runner(tmp_path, 1, 'load', load_from=str(path))
    runner.load_or_resume()
    for k, v in state.items():
        assert torch.equal(runner.model.state_dict()[k], v), k
    assert runner.iter == 0  # weights only, no training state


def test_numpy_and_history_buffer_round_trip(tmp_path):
    buf = HistoryBuffer()
    buf.update(1.5)
    buf.update(2.0, count=3)
    obj = dict(f64=np.float64(0.25), i64=np.int64(-3), b=np.bool_(True),
               arr=np.arange(6, dtype=np.int32).reshape(2, 3),
               f16=np.ones(2, np.float16), dt=np.dtype('float32'), hist=buf)
    torch.save(obj, tmp_path / 'np.pth')
    back = torch.load(tmp_path / 'np.pth')
    assert back['f64'] == 0.25 and back['f64'].dtype == np.float64
    assert back['i64'] == -3 and back['b']
    assert np.array_equal(back['arr'], obj['arr'])
    assert back['arr'].dtype == np.int32 and back['f16'].dtype == np.float16
    assert back['dt'] == np.dtype('float32')
    assert back['hist'].mean() == pytest.approx(buf.mean())
    assert back['hist'].data[1].tolist() == [1, 3]


# ------------------------------------------------------ malicious pickles
def _touch_marker(path):
    """A callable an attacker might reference; here it only creates a file."""
    open(path, 'w').close()


class _Payload:
    """Unpickles by calling ``fn(*args)``, which would create ``marker``."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    m = str(marker)
    return {
        'os.system': (os.system, (f'touch {m}', ), r'(posix|nt|os)\.system'),
        'builtins.eval': (builtins.eval, (f'open({m!r}, "w").close()', ),
                          'GLOBAL eval was not an allowed'),
        'builtins.exec': (builtins.exec, (f'open({m!r}, "w").close()', ),
                          'GLOBAL exec was not an allowed'),
        # (pickle may name it through any module that re-exports it)
        'subprocess.call': (subprocess.call, (['touch', m], ),
                            r'GLOBAL \S*call was not an allowed'),
        'module function': (_touch_marker, (m, ), '_touch_marker'),
        'operator.methodcaller': (operator.methodcaller, ('system', ),
                                  'operator.methodcaller'),
        # getattr is bound to a guard that serves HistoryBuffer only: the
        # first step of a getattr chain towards __globals__ is refused
        'getattr on HistoryBuffer': (getattr, (HistoryBuffer, '__init__'),
                                     r"getattr\(.*HistoryBuffer.*'__init__'"),
        'getattr on numpy': (getattr, (np.ndarray, 'tofile'),
                             r"getattr\(.*ndarray.*'tofile'"),
    }


PAYLOADS = list(_payloads('x'))


def _evil_checkpoint(tmp_path, kind):
    marker = tmp_path / f'marker-{uuid.uuid4().hex}'
    fn, args, match = _payloads(marker)[kind]
    # An MMEngine-looking checkpoint with the payload where the message hub
    # keeps its HistoryBuffers.
    ckpt = dict(
        meta=dict(epoch=1, iter=3),
        state_dict={'w': torch.ones(2)},
        message_hub=dict(log_scalars={'train/loss': _Payload(fn, args)}))
    path = tmp_path / 'evil.pth'
    torch.save(ckpt, path)
    return path, marker, match


@pytest.mark.parametrize('kind', PAYLOADS)
def test_torch_load_refuses_other_callables(tmp_path, kind):
    path, marker, match = _evil_checkpoint(tmp_path, kind)
    with pytest.raises(pickle.UnpicklingError, match=match):
        torch.load(path)
    with pytest.raises(pickle.UnpicklingError, match=match):
        torch.load(path, weights_only=True, map_location='cpu')
    assert not marker.exists()


@pytest.mark.parametrize('kind', ['os.system', 'builtins.eval'])
def test_mmengine_loaders_refuse_other_callables(tmp_path, kind):
    path, marker, match = _evil_checkpoint(tmp_path, kind)
    with pytest.raises(pickle.UnpicklingError, match=match):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    with pytest.raises(pickle.UnpicklingError, match=match):
        load_checkpoint(nn.Linear(2, 2), str(path), map_location='cpu')
    assert not marker.exists()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A local HTTP server for tmp_path/served, and torch.hub's cache in
    tmp_path/hub: ``served(name) -> URL``."""
    import functools
    import http.server
    import threading
    root = tmp_path / 'served'
    root.mkdir()
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield lambda name: f'http://127.0.0.1:{server.server_port}/{name}'
    server.shutdown()
    server.server_close()


def test_url_checkpoints_load_safely(tmp_path, served):
    """MMEngine loads http(s) checkpoints through torch.hub, whose default
    is weights_only=False: a served file ran code. adder_mm replaces that
    loader, and the tools' check downloads and checks a URL like a file."""
    from adder_mm.apis import ToolError, read_checkpoint
    path, marker, match = _evil_checkpoint(tmp_path, 'os.system')
    os.replace(path, tmp_path / 'served' / 'evil.pth')
    with pytest.raises(pickle.UnpicklingError, match=match):
        CheckpointLoader.load_checkpoint(served('evil.pth'),
                                         map_location='cpu')
    with pytest.raises(ToolError, match='evil.pth.*safe loader'):
        read_checkpoint(served('evil.pth'))
    assert not marker.exists()
    torch.save({'state_dict': {'w': torch.ones(2)}},
               tmp_path / 'served' / 'good.pth')
    assert torch.equal(read_checkpoint(served('good.pth'))['state_dict']['w'],
                       torch.ones(2))
    loaded = CheckpointLoader.load_checkpoint(served('good.pth'),
                                              map_location='cpu')
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))
    with pytest.raises(ToolError, match='could not be downloaded'):
        read_checkpoint(served('missing.pth'))


def test_runner_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """MMEngine's save_checkpoint writes through the local file backend,
    in place: a full disk left a checkpoint that does not load. Through
    adder_mm's backend a failed write leaves the old file and no other."""
    from mmengine.runner.checkpoint import save_checkpoint

    import adder_mm.utils.fileio as fileio
    path = tmp_path / 'epoch_1.pth'
    save_checkpoint({'state_dict': {'w': torch.ones(2)}}, str(path))
    before = path.read_bytes()

    def full_disk(src, dst):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(fileio.os, 'replace', full_disk)
    with pytest.raises(OSError, match='No space left'):
        save_checkpoint({'state_dict': {'w': torch.zeros(2)}}, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['epoch_1.pth']


# ------------------------------------------------------ the allow-list
def test_allow_list_is_exact():
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    allowed = checkpoint_safe_globals()
    assert len(allowed) == len(set(allowed)), 'duplicates'
    named = {HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar}
    assert named <= set(allowed)
    pairs = [g for g in allowed if isinstance(g, tuple)]
    # builtins.getattr resolves to the guard, never to the builtin
    assert pairs == [(history_buffer_getattr, 'builtins.getattr')]
    for g in set(allowed) - named - set(pairs):
        # the rest are numpy's dtype classes (Float32DType, ...)
        assert isinstance(g, type) and issubclass(g, np.dtype), g
        assert g.__module__ == 'numpy.dtypes', g
    # those dtype classes cover the dtypes a message hub may hold
    for t in ('float16', 'float32', 'float64', 'int32', 'int64', 'bool'):
        assert type(np.dtype(t)) in allowed


DANGEROUS = [builtins.eval, builtins.exec, builtins.getattr, builtins.setattr,
             builtins.compile, builtins.open, builtins.__import__, os.system,
             os.popen, subprocess.Popen, subprocess.call, operator.attrgetter,
             pickle.loads]


def test_no_dangerous_callable_registered():
    ours = checkpoint_safe_globals()
    registered = torch.serialization.get_safe_globals()
    for g in ours:
        assert g in registered, f'{g} not registered on import'
    for g in DANGEROUS:
        assert g not in ours and g not in registered, g
    # nothing from modules that run code or touch the system, from anyone
    bad_modules = ('builtins', 'os', 'posix', 'nt', 'subprocess', 'sys',
                   'importlib', 'runpy', 'shutil', 'pickle', 'operator',
                   'functools', 'code', 'pty')
    for g in registered:
        g = g[0] if isinstance(g, tuple) else g
        if isinstance(g, type) and issubclass(g, BaseException):
            continue  # torch allow-lists exception classes itself
        assert getattr(g, '__module__', '') not in bad_modules, g


def test_getattr_guard():
    assert history_buffer_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for name in ('min', 'max', 'current'):
        assert history_buffer_getattr(HistoryBuffer, name) is \
            getattr(HistoryBuffer, name)
    for obj, name in ((HistoryBuffer, '__init__'), (HistoryBuffer, 'update'),
                      (HistoryBuffer, '__class__'), (os, 'system'),
                      (np.ndarray, 'tofile'), (HistoryBuffer(), 'mean'),
                      (builtins, 'eval')):
        with pytest.raises(pickle.UnpicklingError, match='refused getattr'):
            history_buffer_getattr(obj, name)


def _optimizer_ckpt(optimizer):
    """What a Runner checkpoint keeps of ``optimizer`` after one step."""
    param = nn.Parameter(torch.randn(3))
    opt = optimizer([param])
    param.grad = torch.randn(3)
    opt.step()
    return {'optimizer': opt.state_dict()}


@pytest.mark.parametrize('saved, config, refused', [
    # SGD's state resumed by Adam failed at the first step inside torch
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
     dict(type='Adam', lr=1e-3), "KeyError: 'step'"),
    (lambda p: torch.optim.Adam(p), dict(type='SGD', lr=0.1, momentum=0.9),
     "KeyError: 'momentum'"),
    # no state kept yet, but the saved param_groups replace the config's
    (lambda p: torch.optim.SGD(p, lr=0.1), dict(type='Adam'),
     "KeyError: 'betas'"),
    # continuable: the same optimizer (the saved hyper-parameters win on
    # loading), or one with the same state and groups (AdamW)
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
     dict(type='SGD', lr=0.5, momentum=0.5, nesterov=True), None),
    (lambda p: torch.optim.Adam(p), dict(type='Adam', amsgrad=True), None),
    (lambda p: torch.optim.Adam(p), dict(type='AdamW', lr=1e-3), None),
])
def test_resume_refuses_another_optimizers_state(saved, config, refused):
    from mmengine.config import Config

    from adder_mm.apis import ToolError, check_optimizer_state
    cfg = Config(dict(optim_wrapper=dict(optimizer=config)))
    ckpt = _optimizer_ckpt(saved)
    if refused is None:
        before = copy.deepcopy(ckpt)
        check_optimizer_state(ckpt, cfg, 'x.pth')
        # the stand-in step left the checkpoint's state as it was
        for key, value in before['optimizer']['state'][0].items():
            assert torch.equal(ckpt['optimizer']['state'][0][key], value)
        return
    with pytest.raises(ToolError) as e:
        check_optimizer_state(ckpt, cfg, 'x.pth')
    message = str(e.value)
    assert f"config's {config['type']} cannot continue" in message
    assert refused in message and 'load_from=x.pth without --resume' in \
        message


def test_resume_check_skips_what_it_cannot_step():
    """An optimizer that needs a closure (LBFGS) or an unknown type is not
    checked, so the check never stops a run it cannot judge."""
    from mmengine.config import Config

    from adder_mm.apis import check_optimizer_state
    ckpt = _optimizer_ckpt(lambda p: torch.optim.SGD(p, lr=0.1, momentum=.9))
    for config in (dict(type='LBFGS'), dict(type='NoSuchOptimizer')):
        cfg = Config(dict(optim_wrapper=dict(optimizer=config)))
        check_optimizer_state(ckpt, cfg, 'x.pth')
