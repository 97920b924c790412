"""The ``--cfg-options`` check (adder_mm.apis.cfg_options) in-process: keys
MMEngine reads without the config naming them are accepted, typos are not,
and the options address the config file as written, before a tool's flags
reshape it. The tools' exits on bad options are in test_tool_errors.py."""
import argparse
import os.path as osp

import pytest
from mmengine.config import Config

import adder_mm  # noqa: F401
from adder_mm.apis import ToolError, cfg_options_action, check_cfg_options
from adder_mm.apis.runner import tool_config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ADDER_CFG = osp.join(REPO, 'configs', 'adder_r20_digits.py')


@pytest.fixture(scope='module')
def digits_cfg():
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return Config.fromfile(ADDER_CFG)


def test_cfg_options_accept_existing_keys_and_constructor_args(digits_cfg):
    opts = {
        'train_cfg.max_epochs': 2,
        # not in the config: arguments of the classes the dicts build
        'model.backbone.frozen_stages': 1,  # ResNet, through **kwargs
        'optim_wrapper.optimizer.nesterov': True,  # torch.optim.SGD
        'train_cfg.val_begin': 2,  # EpochBasedTrainLoop (no type)
        'train_dataloader.dataset.pipeline.1.crop_size': 30,  # list index
    }
    assert check_cfg_options(digits_cfg, opts) == opts


def test_cfg_options_hook_arguments(digits_cfg):
    """CheckpointHook's **kwargs go to Runner.save_checkpoint, not to a
    base class, and a hook without an __init__ takes nothing: typos there
    were accepted and failed at the first save (or did nothing)."""
    ok = {'default_hooks.checkpoint.max_keep_ckpts': 1}
    assert check_cfg_options(digits_cfg, ok) == ok
    for key, hint in (('default_hooks.checkpoint.max_keep_ckpt',
                       'did you mean default_hooks.checkpoint.'
                       'max_keep_ckpts?'),
                      ('default_hooks.visualization.enabl',
                       'did you mean default_hooks.visualization.enable?'),
                      ('default_hooks.param_scheduler.by_epoch',
                       'no such key')):
        with pytest.raises(ToolError) as e:
            check_cfg_options(digits_cfg, {key: 1})
        assert hint in str(e.value)


def test_cfg_options_plus_adds_and_refuses_existing(digits_cfg):
    assert check_cfg_options(digits_cfg, {'+model.backbone.my_arg': 1}) == {
        'model.backbone.my_arg': 1}
    with pytest.raises(ToolError, match='exists already; drop the +'):
        check_cfg_options(digits_cfg, {'+train_cfg.max_epochs': 1})


@pytest.mark.parametrize('key, message', [
    ('model.backbone.depht', r'did you mean model.backbone.depth\?'),
    ('model.bakbone.depth', r"\('bakbone' is not in model\); did you mean "
     r'model.backbone.depth\?'),
    ('train_dataloader.dataset.pipeline.7.crop_size',
     r'is a list of 3 items; address one by its index 0\.\.2'),
    ('train_cfg.max_epochs.x', r'train_cfg.max_epochs is \d+ \(a int\), '
     'which has no keys'),
    ('a..b', 'empty part'),
])
def test_cfg_options_errors(digits_cfg, key, message):
    with pytest.raises(ToolError, match=message):
        check_cfg_options(digits_cfg, {key: 1})


@pytest.mark.parametrize('key', [
    # read by the Runner from dicts that have no type, absent from the
    # config: they were refused as 'no such key'
    'optim_wrapper.clip_grad.max_norm',  # OptimWrapper
    'optim_wrapper.accumulative_counts',
    'optim_wrapper.paramwise_cfg.bias_decay_mult',  # the constructor's
    'optim_wrapper.paramwise_cfg.adder_log',  # AdderOptimWrapperConstructor
    'optim_wrapper.paramwise_cfg.custom_keys.backbone.lr_mult',
    'optim_wrapper.paramwise_cfg.custom_keys.head.adder_eta',
    'train_dataloader.drop_last',  # torch's DataLoader
    'train_dataloader.prefetch_factor',
    'val_dataloader.num_batch_per_epoch',  # Runner.build_dataloader's own
    'randomness.diff_rank_seed',  # Runner.set_randomness
    'env_cfg.dist_cfg.timeout',  # torch.distributed.init_process_group
    'env_cfg.dist_cfg.port',  # init_dist (Slurm)
    'env_cfg.resource_limit',  # Runner.setup_env
    'env_cfg.mp_cfg.mp_start_method',
    'auto_scale_lr.enable',
    'experiment_name',  # Runner.__init__, the config's top level
    'model_wrapper_cfg.find_unused_parameters',
    'log_processor.window_size',  # LogProcessor
    'data_preprocessor.to_rgb',  # ClsDataPreprocessor
    'model.data_preprocessor.type',
    'train_cfg.type',  # a loop's type (or train_cfg.by_epoch) picks it
    'model_wrapper_cfg.type',
    'find_unused_parameters',  # read by MMEngine's DDP wrapper
    # every key of a custom_keys entry goes into the parameter group
    'optim_wrapper.paramwise_cfg.custom_keys.backbone.momentum',
])
def test_keys_the_runner_reads_are_accepted(digits_cfg, key):
    assert check_cfg_options(digits_cfg, {key: 1}) == {key: 1}


@pytest.mark.parametrize('key, message', [
    ('optim_wrapper.paramwise_cfg.bias_decay_mul',
     r'did you mean optim_wrapper.paramwise_cfg.bias_decay_mult\?'),
    ('optim_wrapper.paramwise_cfg.custom_keys.head.lr_mul',
     r'did you mean optim_wrapper.paramwise_cfg.custom_keys.head.lr_mult\?'),
    ('optim_wrapper.cliP_grad', r'did you mean optim_wrapper.clip_grad\?'),
    ('train_dataloader.drop_lst', r'did you mean train_dataloader.drop_last'),
    ('randomness.sed', r'did you mean randomness.seed\?'),
    ('env_cfg.dist_cfg.timout', r'did you mean env_cfg.dist_cfg.timeout\?'),
    ('env_cfg.cudnn_bench', r'did you mean env_cfg.cudnn_benchmark\?'),
    ('auto_scale_lr.enabled', r'did you mean auto_scale_lr.enable\?'),
    ('experiment_nam', r'did you mean experiment_name\?'),
    ('data_preprocessor.to_rg', r'did you mean data_preprocessor.to_rgb\?'),
    ('optim_wrapper.optimizer.betas', 'no such key'),  # SGD has none
    # MMEngine's merge reads list indices as digits: -1 failed inside it
    # with "list indices must be integers or slices, not str"
    ('train_dataloader.dataset.pipeline.-2.crop_size',
     r'is a list of 3 items; address one by its index 0\.\.2'),
])
def test_misspelt_runner_keys_are_refused(digits_cfg, key, message):
    with pytest.raises(ToolError, match=message):
        check_cfg_options(digits_cfg, {key: 1})


def test_keys_below_absent_dicts(digits_cfg):
    """paramwise_cfg on a config without optim_wrapper gave an
    AttributeError traceback; a loop's by_epoch when the config has no
    train_cfg was refused; a data_preprocessor is checked against the
    class it builds (the top-level one's type: MAE's SelfSupDataPreprocessor
    has bgr_to_rgb)."""
    from mmengine.config import Config as Cfg
    bare = Cfg(dict(model=dict(type='ImageClassifier')))
    with pytest.raises(ToolError, match='optim_wrapper.paramwise_cfg.x: no '
                       'such key'):
        check_cfg_options(bare, {'optim_wrapper.paramwise_cfg.x': 1})
    for key in ('optim_wrapper.paramwise_cfg.norm_decay_mult',
                'train_cfg.by_epoch'):
        assert check_cfg_options(bare, {key: 1}) == {key: 1}
    cfg = digits_cfg.copy()
    cfg.data_preprocessor = dict(type='SelfSupDataPreprocessor')
    key = 'model.data_preprocessor.bgr_to_rgb'
    assert check_cfg_options(cfg, {key: True}) == {key: True}


def test_other_constructors_paramwise_cfg_is_not_checked(digits_cfg):
    cfg = digits_cfg.copy()
    cfg.optim_wrapper.constructor = 'LearningRateDecayOptimWrapperConstructor'
    key = 'optim_wrapper.paramwise_cfg.layer_decay_rate'
    assert check_cfg_options(cfg, {key: 0.6}) == {key: 0.6}


def test_unbalanced_brackets_are_a_usage_error(capsys):
    """MMEngine's DictAction raised a bare AssertionError (a traceback)."""
    parser = argparse.ArgumentParser(prog='tool')
    parser.add_argument('--cfg-options', nargs='+',
                        action=cfg_options_action())
    with pytest.raises(SystemExit) as e:
        parser.parse_args(['--cfg-options', 'train_cfg.max_epochs=2',
                           'model.backbone.out_indices=[1,2'])
    assert e.value.code == 2
    assert ('--cfg-options model.backbone.out_indices=[1,2: Imbalanced '
            'brackets') in capsys.readouterr().err
    args = parser.parse_args(['--cfg-options', 'a.b=[1,(2,3)]', 'c=x[y'])
    assert args.cfg_options == {'a.b': [1, (2, 3)], 'c': 'x[y'}
    # mismatched kinds: a RecursionError inside DictAction
    with pytest.raises(SystemExit):
        parser.parse_args(['--cfg-options', 'a=(1,[2)]'])
    assert 'a=(1,[2)]: mismatched brackets' in capsys.readouterr().err


def test_options_address_the_config_before_the_tools_flags(tmp_path,
                                                           tool_module):
    """train.py --no-validate set val_dataloader to None and test.py --tta
    moved the model under tta_model.module before the options were
    checked: keys of the config file were refused as 'None has no keys' /
    'no such key'."""
    train = tool_module('tools/train.py')
    args = train.parse_args([ADDER_CFG, '--no-validate', '--work-dir',
                             str(tmp_path / 'w'), '--cfg-options',
                             'val_dataloader.batch_size=8',
                             'train_cfg.max_epochs=3'])
    cfg = tool_config(args, train.merge_args)
    assert cfg.val_dataloader is None and cfg.train_cfg.max_epochs == 3

    test = tool_module('tools/test.py')
    args = test.parse_args([ADDER_CFG, str(tmp_path / 'x.pth'), '--tta',
                            '--work-dir', str(tmp_path / 'w'),
                            '--cfg-options', 'model.backbone.depth=32',
                            'test_dataloader.dataset.pipeline.0.scale=36'])
    cfg = tool_config(args, test.merge_args)
    assert cfg.model.module.backbone.depth == 32
    # the option reached the pipeline that --tta derived from it
    assert cfg.tta_pipeline[0].scale == 36


def test_options_against_the_command_line(tmp_path, tool_module):
    """--amp makes the wrapper an AmpOptimWrapper before the options are
    checked (optim_wrapper.loss_scale was refused once they went first);
    keys only a flag sets are refused instead of silently overwritten; an
    option beats a tool's default."""
    train = tool_module('tools/train.py')
    args = train.parse_args([ADDER_CFG, '--cfg-options',
                             'optim_wrapper.loss_scale=512',
                             f'work_dir={tmp_path / "option"}'])
    args.amp = True  # parse_args refuses --amp without a GPU
    cfg = tool_config(args, train.merge_args, train.OWNED, train.amp_wrapper)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 512
    assert cfg.work_dir == str(tmp_path / 'option')
    for tool, argv, key, flag in (
            ('train', [ADDER_CFG], 'launcher=pytorch', '--launcher'),
            ('test', [ADDER_CFG, 'x.pth'], 'load_from=y.pth', 'CHECKPOINT'),
            ('quantize', [ADDER_CFG, 'x.pth'], 'work_dir=w', '--work-dir')):
        module = tool_module(f'tools/{tool}.py')
        args = module.parse_args(argv + ['--cfg-options', key])
        with pytest.raises(ToolError, match=f'{key.split("=")[0]} \\(use '
                           f'.*{flag}'):
            tool_config(args, module.merge_args, module.OWNED)


def test_flags_win_over_options(tmp_path, tool_module):
    train = tool_module('tools/train.py')
    config = tmp_path / 'workers.py'
    config.write_text(f'_base_ = [{ADDER_CFG!r}]\n'
                      'train_dataloader = dict(num_workers=2, '
                      'persistent_workers=True)\n')
    args = train.parse_args([str(config), '--work-dir', str(tmp_path / 'flag'),
                             '--cfg-options',
                             f'work_dir={tmp_path / "option"}',
                             'train_dataloader.num_workers=0'])
    cfg = tool_config(args, train.merge_args)
    assert cfg.work_dir == str(tmp_path / 'flag')
    # no workers left: DataLoader refuses persistent ones
    assert cfg.train_dataloader.num_workers == 0
    assert cfg.train_dataloader.persistent_workers is False
