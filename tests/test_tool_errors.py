"""Every user mistake of issue 15 gets a message that names the problem and
points at the fix, from tools/train.py and tools/test.py, before anything is
built or trained, with exit status 2 and no traceback. Plus the checks
themselves (adder_mm.apis) in-process, and tool outputs that stay out of the
current folder.
"""
import os
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config

import adder_mm  # noqa: F401
from adder_mm.apis import (
    ToolError,
    prepare_data_roots,
    read_checkpoint,
)
from adder_mm.models.layers import ADDER_LAYERS_KEY, count_adder_layers

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN = osp.join(REPO, 'tools', 'train.py')
TEST = osp.join(REPO, 'tools', 'test.py')
COUNT_OPS = osp.join(REPO, 'tools', 'analysis_tools', 'count_ops.py')
ADDER_CFG = osp.join(REPO, 'configs', 'adder_r20_digits.py')


def refused(proc, *needles):
    """The tool stopped with status 2, one message naming the problem and
    no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert 'error:' in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-3000:])
    return proc.stderr


# --- --cfg-options -------------------------------------------------------

@pytest.mark.parametrize('tool', ['train', 'test'])
def test_misspelt_cfg_option_names_the_closest_key(tool, tmp_path,
                                                    run_tool):
    work = tmp_path / 'w'
    head = [TRAIN, ADDER_CFG] if tool == 'train' else [
        TEST, ADDER_CFG, str(tmp_path / 'unused.pth')]
    proc = run_tool(head + ['--work-dir', str(work), '--cfg-options',
                       'train_cfg.max_epoch=1',
                       'optim_wraper.optimizer.lr=0.01'])
    refused(proc, 'train_cfg.max_epoch: no such key; did you mean '
            'train_cfg.max_epochs?',
            'did you mean optim_wrapper.optimizer.lr?',
            '+key=value')
    assert not work.exists()  # nothing was built


@pytest.mark.parametrize('tool', ['train', 'test', 'count_ops'])
def test_cfg_option_without_value_is_a_usage_error(tool, tmp_path, run_tool):
    head = {'train': [TRAIN, ADDER_CFG],
            'test': [TEST, ADDER_CFG, str(tmp_path / 'unused.pth')],
            'count_ops': [COUNT_OPS, ADDER_CFG]}[tool]
    proc = run_tool(head + ['--cfg-options', 'train_cfg.max_epochs'],
                    cwd=str(tmp_path))
    refused(proc, '--cfg-options train_cfg.max_epochs: expected key=value')
    assert os.listdir(tmp_path) == []


def test_count_ops_checks_cfg_options_and_checkpoints(bad_checkpoints,
                                                      tmp_path, run_tool):
    proc = run_tool([COUNT_OPS, ADDER_CFG, '--cfg-options',
                     'model.backbone.deph=32'], cwd=str(tmp_path))
    refused(proc, 'model.backbone.deph: no such key; did you mean '
            'model.backbone.depth?')
    proc = run_tool([COUNT_OPS, ADDER_CFG, '--quantized',
                     str(bad_checkpoints['good'])], cwd=str(tmp_path))
    refused(proc, 'is a float checkpoint')


@pytest.fixture(scope='module')
def registered():
    """MMPretrain's and adder_mm's classes in MMEngine's registries."""
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)


# --- checkpoints ---------------------------------------------------------

@pytest.fixture(scope='module')
def bad_checkpoints(tmp_path_factory):
    """Each kind of bad file, named by what is wrong with it."""
    root = tmp_path_factory.mktemp('ckpts')
    from mmengine.config import Config as Cfg
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    model = MODELS.build(Cfg.fromfile(ADDER_CFG).model)
    good = root / 'good.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, good)
    data = good.read_bytes()
    files = {
        'empty': b'',
        'truncated': data[:len(data) // 2],
        'garbage': b'\x00\x01not a checkpoint' * 64,
    }
    paths = {}
    for name, content in files.items():
        paths[name] = root / f'{name}.pth'
        paths[name].write_bytes(content)

    # A pickled instance of an arbitrary class: the safe loader must
    # refuse it without importing its module.
    (root / 'evil_module.py').write_text('class Payload:\n    pass\n')
    sys.path.insert(0, str(root))
    try:
        import evil_module
        paths['refused'] = root / 'refused.pth'
        torch.save({'state_dict': model.state_dict(),
                    'obj': evil_module.Payload()}, paths['refused'])
    finally:
        sys.path.remove(str(root))
        sys.modules.pop('evil_module', None)
    state = model.state_dict()
    state.pop('backbone.layer1.0.conv1.weight')
    state['backbone.extra.weight'] = torch.zeros(2)
    state['head.fc.weight'] = torch.zeros(3, 64)
    paths['mismatch'] = root / 'mismatch.pth'
    torch.save({'state_dict': state}, paths['mismatch'])
    paths['missing'] = root / 'missing.pth'
    paths['good'] = good
    # As tools/train.py saves it (ExactResumeHook writes the meta key).
    paths['adder'] = root / 'adder.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {ADDER_LAYERS_KEY: count_adder_layers(model)}},
               paths['adder'])
    return paths


MESSAGES = {
    'missing': ['not found'],
    'empty': ['is empty (0 bytes)'],
    'truncated': ['truncated or corrupted'],
    'garbage': ['is not a PyTorch checkpoint'],
    'refused': ['evil_module.Payload', 'does not allow', 'add_safe_globals'],
    'mismatch': ['does not match the model', 'backbone.layer1.0.conv1.weight',
                 'backbone.extra.weight',
                 'head.fc.weight: checkpoint (3, 64)'],
}


@pytest.mark.parametrize('kind', list(MESSAGES))
def test_test_tool_names_what_is_wrong_with_the_checkpoint(
        kind, bad_checkpoints, tmp_path, run_tool):
    proc = run_tool([TEST, ADDER_CFG, str(bad_checkpoints[kind]), '--work-dir',
                str(tmp_path / 'w')])
    err = refused(proc, *MESSAGES[kind])
    assert 'weights_only=False' not in err
    assert 'convert the checkpoint' not in err or kind == 'mismatch'
    # nothing was built: a mismatch is found on a model built before the
    # Runner (it wrote the work dir, log and config copy first)
    assert not (tmp_path / 'w').exists()


def test_adder_checkpoint_is_refused_by_its_cnn_twin(bad_checkpoints,
                                                     tmp_path, run_tool):
    """The CNN twin has the AdderNet's keys and shapes: only the meta
    written at saving tells them apart (it tested at chance before)."""
    cnn = osp.join(REPO, 'configs', 'cnn_r20_digits.py')
    proc = run_tool([TEST, cnn, str(bad_checkpoints['adder']), '--work-dir',
                     str(tmp_path / 'w')])
    refused(proc, 'saved from an AdderNet (20 adder layers)',
            'cnn_r20_digits.py is a model without adder layers (0)')
    assert not (tmp_path / 'w').exists()


def test_checkpoints_record_the_model_kind():
    from types import SimpleNamespace

    from mmengine.config import Config as Cfg
    from mmpretrain.registry import MODELS

    from adder_mm.engine.hooks import ExactResumeHook
    for name, n in (('adder_r20_digits.py', 20), ('cnn_r20_digits.py', 0)):
        model = MODELS.build(
            Cfg.fromfile(osp.join(REPO, 'configs', name)).model)
        ckpt = {'meta': {}}
        ExactResumeHook().before_save_checkpoint(
            SimpleNamespace(model=model, iter=0), ckpt)
        assert ckpt['meta'][ADDER_LAYERS_KEY] == n


@pytest.mark.parametrize('kind', ['truncated', 'mismatch'])
def test_resume_checks_the_checkpoint_before_training(kind, bad_checkpoints,
                                                      tmp_path, run_tool):
    proc = run_tool([TRAIN, ADDER_CFG, '--work-dir', str(tmp_path / 'w'),
                '--resume', str(bad_checkpoints[kind])])
    refused(proc, '--resume checkpoint', *MESSAGES[kind])
    assert 'Epoch(train)' not in proc.stdout + proc.stderr
    assert not (tmp_path / 'w').exists()


def test_resume_auto_with_empty_last_checkpoint(tmp_path, run_tool):
    """MMEngine writes last_checkpoint in place; an empty one (a save that
    did not finish) gave 'Auto resumed from ...' and a traceback."""
    work = tmp_path / 'w'
    work.mkdir()
    (work / 'last_checkpoint').write_text('')
    proc = run_tool([TRAIN, ADDER_CFG, '--work-dir', str(work), '--resume'])
    refused(proc, 'last_checkpoint', 'is empty', '--resume PATH')
    assert 'Epoch(train)' not in proc.stdout + proc.stderr


@pytest.mark.parametrize('args, message', [
    (['--out', 'res.json'], 'pred is written as .pkl/.pickle'),
    (['--out', 'm.txt', '--out-item', 'metrics'], 'metrics is written as'),
    (['--out', '.'], 'is a folder'),
    (['--out', 'afile/r.pkl'], 'is a file'),
])
def test_test_tool_checks_out_first(args, message, tmp_path, run_tool):
    """--out was checked by the writers, after the whole test ran."""
    (tmp_path / 'afile').write_text('x')
    proc = run_tool([TEST, ADDER_CFG, str(tmp_path / 'unused.pth')] + args,
                    cwd=str(tmp_path))
    refused(proc, message)


def test_work_dir_and_amp_checked_first(tmp_path, run_tool):
    """A --work-dir that cannot be a folder, --amp without a GPU and a
    config file MMEngine cannot read gave tracebacks (or, for an empty
    --work-dir, checkpoints in the current folder)."""
    afile = tmp_path / 'afile'
    afile.write_text('x')
    text_cfg = tmp_path / 'cfg.txt'
    text_cfg.write_text('model = 1\n')
    cases = [
        ([TRAIN, ADDER_CFG, '--work-dir', str(afile)], 'is a file'),
        ([TRAIN, ADDER_CFG, '--work-dir', str(afile / 'sub')], 'is a file'),
        ([TRAIN, ADDER_CFG, '--work-dir', ''], '--work-dir is empty'),
        ([TEST, ADDER_CFG, 'x.pth', '--work-dir', str(afile)], 'is a file'),
        ([TRAIN, str(text_cfg)], 'cannot be loaded'),
    ]
    if not torch.cuda.is_available():
        cases.append(([TRAIN, ADDER_CFG, '--amp'], '--amp'))
    for args, message in cases:
        refused(run_tool(args, cwd=str(tmp_path)), message)
    assert sorted(os.listdir(tmp_path)) == ['afile', 'cfg.txt']


def test_seeds_tool_checks_before_training(tmp_path, run_tool):
    """seeds.py trained every run before finding a broken --markdown or
    --out, and randomness.seed in --cfg-options silently replaced every
    seed (a table of n runs of one seed)."""
    seeds = osp.join(REPO, 'tools', 'analysis_tools', 'seeds.py')
    broken = tmp_path / 'broken.md'
    broken.write_text('<!-- seeds:begin -->\n')
    head = [seeds, ADDER_CFG, '--work-dir', str(tmp_path / 'w')]
    for args, message in (
            (['--markdown', str(broken)], 'one marker without the other'),
            (['--out', str(tmp_path / 'broken.md' / 'r.json')],
             'is a file'),
            (['--cfg-options', 'randomness.seed=5'], 'use --seeds')):
        refused(run_tool(head + args), message)
    assert not (tmp_path / 'w').exists()


def test_count_ops_checks_its_arguments_first(tmp_path, run_tool):
    """Bad --group-depth, output paths and --markdown files gave tracebacks
    after the counting (--plot p.txt; --plot DIR wrote DIR.png)."""
    broken = tmp_path / 'broken.md'
    broken.write_text('<!-- energy:end -->\n')
    for args, message in ((['--group-depth', '0'], '--group-depth'),
                          (['--plot', str(tmp_path / 'p.txt')], '.png'),
                          (['--out', str(tmp_path)], 'is a folder'),
                          (['--markdown', str(broken)],
                           'one marker without the other')):
        refused(run_tool([COUNT_OPS, ADDER_CFG] + args), message)


def test_zero_workers_on_the_command_line_drop_persistent_workers():
    """--cfg-options train_dataloader.num_workers=0 on a config with
    persistent workers: DataLoader refused the pair."""
    from adder_mm.apis import apply_cfg_options
    cfg = Config(dict(train_dataloader=dict(
        batch_size=2, num_workers=4, persistent_workers=True,
        dataset=dict(type='X'))))
    apply_cfg_options(cfg, {'train_dataloader.num_workers': 0})
    assert cfg.train_dataloader.persistent_workers is False
    cfg.train_dataloader.num_workers = 2
    cfg.train_dataloader.persistent_workers = True
    apply_cfg_options(cfg, None)
    assert cfg.train_dataloader.persistent_workers is True


def test_read_checkpoint_never_suggests_unsafe_loading(bad_checkpoints):
    for kind in ('refused', 'garbage', 'truncated', 'empty'):
        with pytest.raises(ToolError) as e:
            read_checkpoint(str(bad_checkpoints[kind]))
        assert 'weights_only=False' not in str(e.value)
    assert 'state_dict' in read_checkpoint(str(bad_checkpoints['good']))


# --- data roots ----------------------------------------------------------

CIFAR_USER_CFG = """
_base_ = [
    'mmpretrain::_base_/datasets/cifar10_bs16.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py',
]
model = dict(
    type='ImageClassifier',
    backbone=dict(type='AdderResNet_CIFAR', depth=20),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearBNClsHead', num_classes=10, in_channels=64))
"""


@pytest.mark.parametrize('state', ['missing', 'empty', 'incomplete'])
def test_dataset_problems_reported_at_once_without_download(state,
                                                            tmp_path,
                                                            run_tool):
    """mmpretrain's CIFAR-10 dataset downloads into a missing or empty
    folder by default (a URLError without network): here every loader's
    problem is reported in one message, before the Runner is built."""
    cfg = tmp_path / 'cifar.py'
    cfg.write_text(CIFAR_USER_CFG)
    root = tmp_path / 'data' / 'cifar10'
    if state != 'missing':
        root.mkdir(parents=True)
    if state == 'incomplete':
        (root / 'cifar-10-batches-py').mkdir()
        (root / 'cifar-10-batches-py' / 'data_batch_1').write_bytes(b'x')
    proc = run_tool([TRAIN, str(cfg)], cwd=str(tmp_path))
    why = {'missing': 'the folder does not exist',
           'empty': 'the folder is empty',
           'incomplete': 'missing cifar-10-batches-py/data_batch_2'}[state]
    err = refused(proc, why, 'train_dataloader.dataset.data_root',
                  'val_dataloader.dataset.data_root',
                  'cifar-10-python.tar.gz', 'download=True')
    assert 'URLError' not in err and 'Downloading' not in proc.stdout
    assert not (tmp_path / 'work_dirs').exists()  # no Runner was built


def test_complete_cifar_folder_passes(tmp_path):
    """The archive layout has no split folders: a complete CIFAR-10 folder
    was refused with 'no train/ folder in it'."""
    from adder_mm.apis.data_roots import _expected_files, _registered_class
    cfg_file = tmp_path / 'cifar.py'
    cfg_file.write_text(CIFAR_USER_CFG)
    cfg = Config.fromfile(str(cfg_file))
    root = tmp_path / 'data' / 'cifar10'
    cls = _registered_class(cfg.train_dataloader.dataset.type, 'mmpretrain')
    files = _expected_files(cls, str(root))
    assert len(files) == 7  # 5 training batches, the test batch, the meta
    for f in files:
        os.makedirs(osp.dirname(f), exist_ok=True)
        open(f, 'wb').close()
    for loader in (cfg.train_dataloader, cfg.val_dataloader,
                   cfg.test_dataloader):
        loader.dataset.data_root = str(root)
    prepare_data_roots(cfg, str(cfg_file))


def test_download_true_skips_the_folder_check(tmp_path, registered):
    cfg_file = tmp_path / 'cifar.py'
    cfg_file.write_text(CIFAR_USER_CFG)
    cfg = Config.fromfile(str(cfg_file))
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'none')
    cfg.val_dataloader.dataset.data_root = str(tmp_path / 'none')
    loaders = ('train_dataloader', 'val_dataloader')  # as train.py
    with pytest.raises(ToolError, match='train_dataloader.dataset.download='
                       'True val_dataloader.dataset.download=True'):
        prepare_data_roots(cfg, str(cfg_file), loaders)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.download = True
    prepare_data_roots(cfg, str(cfg_file), loaders)  # the dataset fetches it


def test_failed_download_is_a_message(capsys):
    from urllib.error import URLError

    from adder_mm.apis import run_tool as run_main

    def main(argv):
        raise URLError('Name or service not known')

    with pytest.raises(SystemExit) as e:
        run_main(main, [], prog='train.py')
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('train.py: error: a download failed '
                          '(Name or service not known)')


def _gloo_threads():
    tasks = '/proc/self/task'
    return [name for name in (open(f'{tasks}/{t}/comm').read().strip()
                              for t in os.listdir(tasks)) if 'gloo' in name]


@pytest.mark.skipif(not osp.isdir('/proc/self/task'),
                    reason='counts threads through Linux /proc')
@pytest.mark.parametrize('fails', [False, True])
def test_tools_free_their_process_group(tmp_path, fails):
    """A gloo group left to the interpreter's exit can abort a rank after a
    successful run (a worker thread needs the GIL during finalization);
    run_tool frees it, and so joins its threads, whether main returns
    (holding the group, as a Runner with a DDP model does) or fails."""
    import torch.distributed as dist

    from adder_mm.apis import run_tool as run_main

    def main(argv):
        dist.init_process_group(
            'gloo', init_method=f'file://{tmp_path / "store"}', rank=0,
            world_size=1)
        held = dict(group=dist.group.WORLD, tensor=torch.ones(3))
        dist.all_reduce(held['tensor'])
        assert _gloo_threads()
        if fails:
            raise ToolError('bad input')
        return held

    if fails:
        with pytest.raises(SystemExit):
            run_main(main, [], prog='train.py')
    else:
        assert run_main(main, [], prog='train.py') is None
    assert not dist.is_initialized()
    assert _gloo_threads() == []


# --- outputs -------------------------------------------------------------

def test_count_ops_outputs_go_to_the_work_dir(tmp_path, run_tool):
    proc = run_tool([COUNT_OPS, ADDER_CFG, '--out', '--plot', '--per-layer'],
               cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / 'work_dirs' / 'count_ops' / 'adder_r20_digits'
    assert (out / 'ops.json').is_file() and (out / 'ops.png').is_file()
    assert sorted(os.listdir(tmp_path)) == ['work_dirs']


def test_default_outputs_are_ignored_by_git():
    ignored = open(osp.join(REPO, '.gitignore')).read().split()
    assert 'work_dirs/' in ignored


def test_count_ops_names_an_input_or_model_it_cannot_count(tmp_path,
                                                           run_tool):
    """Input channels the model does not take, an input too large to
    allocate, an unknown model type or a constructor argument the backbone
    refuses gave tracebacks (RuntimeError, KeyError)."""
    unknown = tmp_path / 'unknown.py'
    unknown.write_text(f'_base_ = {ADDER_CFG!r}\n'
                       "model = dict(backbone=dict(type='NopeNet'))\n")
    for args, message in (
            (['--channels', '1'], 'the model takes 3 input channels (its '
             'first layer backbone.conv1 is a Conv2d with in_channels=3), '
             'not 1'),
            # refused on meta tensors, never allocated on the CPU
            (['--channels', '100000000'], 'takes 3 input channels'),
            (['--channels', '1', '--device', 'cpu'],
             'takes 3 input channels'),
            (['--shape', '10000000000'], 'the forward pass on a [1, 3, '
             '10000000000, 10000000000] input failed on cpu'),
            (['--cfg-options', 'model.backbone.depth=33'],
             'the model cannot be built: KeyError: AdderResNet_CIFAR: '
             'invalid depth 33')):
        refused(run_tool([COUNT_OPS, ADDER_CFG, '--no-per-layer'] + args,
                         cwd=str(tmp_path)), message)
    refused(run_tool([COUNT_OPS, str(unknown)], cwd=str(tmp_path)),
            'NopeNet is not in the mmpretrain::model registry')
    assert os.listdir(tmp_path) == ['unknown.py']


def test_empty_split_folder_is_reported(tmp_path, registered):
    """An ImageNet root whose val/ folder exists but is empty passed the
    check and failed inside mmpretrain after the Runner was built."""
    config = osp.join(REPO, 'configs', 'adder_r18_imagenet.py')
    cfg = Config.fromfile(config)
    root = tmp_path / 'imagenet'
    (root / 'train' / 'n01440764').mkdir(parents=True)
    (root / 'val').mkdir()
    for field in ('train_dataloader', 'val_dataloader'):
        cfg[field].dataset.data_root = str(root)
    with pytest.raises(ToolError) as e:
        prepare_data_roots(cfg, config, ('train_dataloader', 'val_dataloader'))
    assert 'val_dataloader.dataset.data_root' in str(e.value)
    assert 'its val/ folder is empty' in str(e.value)
    assert 'train_dataloader' not in str(e.value)
    (root / 'val' / 'n01440764').mkdir()
    prepare_data_roots(cfg, config, ('train_dataloader', 'val_dataloader'))
