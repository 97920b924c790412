"""tools/train.py, tools/test.py, tools/dist_train.sh and the digits configs.

Every run here is a real subprocess of the tools on a tiny derived config:
configs/adder_r20_digits.py with 32 training digits at their native 8x8
size (no upsampling, no random augmentation), batch 8, so one epoch is four
adder ResNet-20 steps. Runtime on 2 CPU cores: about 2-3 minutes in all,
most of it process start-up and the distributed run.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

import adder_mm  # noqa: F401  (allow-lists MMEngine checkpoints for torch.load)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN = osp.join(REPO, 'tools', 'train.py')
TEST = osp.join(REPO, 'tools', 'test.py')
DIST_TRAIN = osp.join(REPO, 'tools', 'dist_train.sh')
# sitecustomize.py there: each distributed worker reports its threads at exit.
EXIT_CHECK = osp.join(REPO, 'tests', 'exit_check')
ADDER_CFG = osp.join(REPO, 'configs', 'adder_r20_digits.py')
CNN_CFG = osp.join(REPO, 'configs', 'cnn_r20_digits.py')

# 8x8 digits as they are: the adder kernels then cost 16x less than at
# 32x32. (Resuming with the shipped random crops: test_training_runs.py.)
TINY = """
_base_ = [{base!r}]
tiny_pipeline = [dict(type='PackInputs')]
train_dataloader = dict(
    batch_size={batch},
    dataset=dict(indices={indices}, pipeline=tiny_pipeline),
    sampler=dict(type='DefaultSampler', shuffle={shuffle}, seed=0))
val_dataloader = dict(
    batch_size=16, dataset=dict(indices=32, pipeline=tiny_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(accumulative_counts={accumulate})
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=2, T_max=2,
         eta_min=0.01)
]
train_cfg = dict(max_epochs=2, val_interval=1)
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=1, max_keep_ckpts=-1))
# Per-iteration losses in the logs (no moving average).
log_processor = dict(window_size=1)
randomness = dict(seed=0)
"""


def write_tiny_config(path, batch=8, indices=32, shuffle=True, accumulate=1,
                      base=ADDER_CFG):
    path.write_text(
        TINY.format(
            base=base,
            batch=batch,
            indices=indices,
            shuffle=shuffle,
            accumulate=accumulate))
    return str(path)


def run_tool(args, cwd=None, env_extra=None, timeout=600):
    env = dict(os.environ)
    # One thread per process: the distributed and single-process runs then
    # reduce in the same order, and parallel test runs do not oversubscribe.
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    # CPU even where CUDA exists: the gloo path and bit-reproducible runs.
    env['CUDA_VISIBLE_DEVICES'] = ''
    env.update(env_extra or {})
    return subprocess.run(
        args,
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout)


def check_ok(proc):
    assert proc.returncode == 0, (
        f'exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\n'
        f'STDERR:\n{proc.stderr[-5000:]}')


def scalars(work_dir):
    """Records of the run's vis_data/scalars.json (one run per work dir)."""
    runs = sorted(d for d in os.listdir(work_dir)
                  if osp.isfile(osp.join(work_dir, d, 'vis_data',
                                         'scalars.json')))
    records = []
    for run in runs:
        with open(osp.join(work_dir, run, 'vis_data', 'scalars.json')) as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def train_losses(records):
    return [r['loss'] for r in records if 'loss' in r]


def parameters(ckpt_path):
    """Trainable parameters of a checkpoint (BN running stats excluded:
    they depend on how the batch is split, the weights do not)."""
    state = torch.load(ckpt_path, map_location='cpu')['state_dict']
    return {
        k: v
        for k, v in state.items()
        if not k.endswith(('running_mean', 'running_var',
                           'num_batches_tracked'))
    }


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """An uninterrupted 2-epoch tiny run: (config, work_dir)."""
    root = tmp_path_factory.mktemp('trained')
    cfg = write_tiny_config(root / 'tiny.py')
    work_dir = str(root / 'run')
    check_ok(run_tool([sys.executable, TRAIN, cfg, '--work-dir', work_dir]))
    return cfg, work_dir


@pytest.mark.slow
def test_resume_continues_and_matches_uninterrupted(trained, tmp_path):
    cfg, full_dir = trained
    work_dir = str(tmp_path / 'resumed')
    # "Stopped after epoch 1": the same run with max_epochs=1 (the lr
    # schedule is fixed by its own end/T_max, not by max_epochs).
    check_ok(run_tool([sys.executable, TRAIN, cfg, '--work-dir', work_dir,
                       '--cfg-options', 'train_cfg.max_epochs=1']))
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))
    assert not osp.exists(osp.join(work_dir, 'epoch_2.pth'))

    proc = run_tool([sys.executable, TRAIN, cfg, '--work-dir', work_dir,
                     '--resume'])
    check_ok(proc)
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 1' in log
    assert 'Epoch(train) [1]' not in log  # epoch 1 is not trained again
    assert 'Epoch(train) [2]' in log

    full = parameters(osp.join(full_dir, 'epoch_2.pth'))
    resumed = parameters(osp.join(work_dir, 'epoch_2.pth'))
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-5,
                                   atol=1e-6, msg=key)
    # The resumed run really trained epoch 2: its weights moved from epoch 1.
    epoch1 = parameters(osp.join(work_dir, 'epoch_1.pth'))
    assert any(not torch.equal(epoch1[k], resumed[k]) for k in epoch1)


@pytest.mark.slow
def test_explicit_resume_path(trained, tmp_path):
    cfg, full_dir = trained
    work_dir = str(tmp_path / 'from_path')
    proc = run_tool([sys.executable, TRAIN, cfg, '--work-dir', work_dir,
                     '--resume', osp.join(full_dir, 'epoch_1.pth')])
    check_ok(proc)
    assert 'resumed epoch: 1' in proc.stdout + proc.stderr
    full = parameters(osp.join(full_dir, 'epoch_2.pth'))
    resumed = parameters(osp.join(work_dir, 'epoch_2.pth'))
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-5,
                                   atol=1e-6, msg=key)


@pytest.mark.slow
def test_test_tool_reproduces_logged_accuracy(trained, tmp_path):
    cfg, work_dir = trained
    logged = [r['accuracy/top1'] for r in scalars(work_dir)
              if 'accuracy/top1' in r]
    assert len(logged) == 2  # validated after each of the 2 epochs
    out = str(tmp_path / 'metrics.json')
    proc = run_tool([sys.executable, TEST, cfg,
                     osp.join(work_dir, 'epoch_2.pth'), '--work-dir',
                     str(tmp_path / 'test'), '--out', out,
                     '--out-item', 'metrics'])
    check_ok(proc)
    with open(out) as f:
        metrics = json.load(f)
    assert metrics['accuracy/top1'] == pytest.approx(logged[-1], abs=1e-6)


@pytest.mark.slow
def test_test_tool_with_tta(trained, tmp_path):
    """--tta wraps the model (tta_model.module): the checkpoint is compared
    with the wrapped model, before and after the Runner is built."""
    cfg, work_dir = trained
    out = str(tmp_path / 'metrics.json')
    proc = run_tool([sys.executable, TEST, cfg,
                     osp.join(work_dir, 'epoch_2.pth'), '--tta', '--work-dir',
                     str(tmp_path / 'test'), '--out', out,
                     '--out-item', 'metrics'])
    check_ok(proc)
    with open(out) as f:
        assert 0 <= json.load(f)['accuracy/top1'] <= 100


@pytest.mark.slow
def test_inferencer_on_image_file(trained, tmp_path):
    import mmcv
    from mmpretrain.apis import ImageClassificationInferencer

    from adder_mm.datasets import SklearnDigits

    cfg, work_dir = trained
    dataset = SklearnDigits(split='test', pipeline=[dict(type='PackInputs')])
    info = dataset.get_data_info(3)
    image = str(tmp_path / 'digit.png')
    # PNG is lossless; imread loads the gray image back as 3 equal channels.
    assert mmcv.imwrite(info['img'][..., 0], image)

    inferencer = ImageClassificationInferencer(
        model=cfg, pretrained=osp.join(work_dir, 'epoch_2.pth'),
        device='cpu')
    result = inferencer(image)[0]
    assert result['pred_class'] == str(result['pred_label'])
    assert 0 <= result['pred_label'] < 10

    # Same scores as the model on the same digit from the dataset.
    model = inferencer.model
    batch = model.data_preprocessor(
        dict(inputs=[dataset[3]['inputs']],
             data_samples=[dataset[3]['data_samples']]), False)
    with torch.no_grad():
        expected = model(**batch, mode='predict')[0].pred_score
    np.testing.assert_allclose(result['pred_scores'], expected.numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dist_train_two_cpu_processes_match_one(tmp_path):
    """2 gloo processes x batch 4 == 1 process x (2 micro-batches of 4).

    BatchNorm normalises each process's batch on its own, so the exactly
    equivalent single-process run is gradient accumulation over the same
    two micro-batches: DefaultSampler(shuffle=False) hands rank r the
    samples r, r+2, ...; the single run's dataset order interleaves them so
    that micro-batch 2i is rank 0's batch i and 2i+1 is rank 1's.
    """
    n, batch = 32, 4
    rank_batches = [list(range(r, n, 2)) for r in (0, 1)]
    order = []
    for i in range(n // 2 // batch):
        for r in (0, 1):
            order += rank_batches[r][i * batch:(i + 1) * batch]
    single_cfg = write_tiny_config(tmp_path / 'single.py', batch=batch,
                                   indices=order, shuffle=False,
                                   accumulate=2)
    dist_cfg = write_tiny_config(tmp_path / 'dist.py', batch=batch,
                                 indices=n, shuffle=False)
    one_epoch = ['--cfg-options', 'train_cfg.max_epochs=1', '--no-validate']
    single_dir, dist_dir = str(tmp_path / 'single'), str(tmp_path / 'dist')

    check_ok(run_tool([sys.executable, TRAIN, single_cfg, '--work-dir',
                       single_dir] + one_epoch))
    pythonpath = os.pathsep.join(
        filter(None, [EXIT_CHECK, os.environ.get('PYTHONPATH')]))
    proc = run_tool(['bash', DIST_TRAIN, dist_cfg, '2', '--work-dir',
                     dist_dir] + one_epoch,
                    env_extra=dict(PORT=str(29500 + os.getpid() % 1000),
                                   PYTHONPATH=pythonpath))
    check_ok(proc)
    assert 'gloo' in proc.stdout + proc.stderr
    # Gloo threads still alive at interpreter exit abort a rank now and then
    # (not every run): the tool must have freed the group before.
    for rank in (0, 1):
        assert f'exit check: rank {rank} has 0 gloo threads' in proc.stderr

    single_losses = train_losses(scalars(single_dir))
    dist_losses = train_losses(scalars(dist_dir))
    assert len(single_losses) == 2 * len(dist_losses) == 8
    # Rank 0 logs its own batch's loss: the even micro-batches.
    np.testing.assert_allclose(dist_losses, single_losses[0::2], rtol=1e-4,
                               atol=1e-5)
    single = parameters(osp.join(single_dir, 'epoch_1.pth'))
    dist = parameters(osp.join(dist_dir, 'epoch_1.pth'))
    assert single.keys() == dist.keys()
    for key in single:
        torch.testing.assert_close(dist[key], single[key], rtol=1e-4,
                                   atol=1e-5, msg=key)


def test_missing_config_path_is_named(tmp_path):
    missing = str(tmp_path / 'no_such_config.py')
    for tool in ([TRAIN, missing], [TEST, missing, 'x.pth']):
        proc = run_tool([sys.executable] + tool)
        assert proc.returncode == 2
        assert 'config file not found' in proc.stderr
        assert 'no_such_config.py' in proc.stderr


def test_cnn_twin_differs_only_in_conv_type():
    from mmengine.config import Config

    adder = Config.fromfile(ADDER_CFG).to_dict()
    cnn = Config.fromfile(CNN_CFG).to_dict()
    assert adder['model']['backbone']['conv_cfg'] == dict(type='Adder')
    assert cnn['model']['backbone']['conv_cfg'] is None
    cnn['model']['backbone']['conv_cfg'] = dict(type='Adder')
    for key in set(adder) | set(cnn):
        if key in ('filename', ):
            continue
        assert adder.get(key) == cnn.get(key), key


def test_gpu_check_help_starts_nothing(tmp_path):
    """gpu_check.sh --help started the check (and a build on a GPU
    machine), making work_dirs/gpu_check in the current folder."""
    script = osp.join(REPO, 'tools', 'gpu_check.sh')
    proc = subprocess.run(['bash', script, '--help'], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('One prepared check of the CUDA kernels')
    assert 'OUT=/some/dir bash tools/gpu_check.sh' in proc.stdout
    proc = subprocess.run(['bash', script, 'now'], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'no arguments' in proc.stderr
    assert list(tmp_path.iterdir()) == []
