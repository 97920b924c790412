"""SklearnDigits: the fixed split, sample format, pipelines of the digits
configs and errors. In-process, about 5 s."""
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config
from mmpretrain.registry import DATASETS
from sklearn.datasets import load_digits

import adder_mm  # noqa: F401  (registers SklearnDigits)
from adder_mm.datasets import (
    DIGITS_CLASSES,
    SklearnDigits,
    digits_split_indices,
)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DIGITS = load_digits()


def test_split_is_stratified_disjoint_and_complete():
    labels = DIGITS.target
    split = digits_split_indices(labels, test_ratio=0.2, seed=0)
    train, test = split['train'], split['test']
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.union1d(train, test), np.arange(len(labels)))
    for cls in range(10):
        n_cls = int((labels == cls).sum())
        assert int((labels[test] == cls).sum()) == round(0.2 * n_cls)
    # The documented sizes.
    assert (len(train), len(test)) == (1438, 359)


def test_split_is_fixed_by_its_seed():
    labels = DIGITS.target
    a = digits_split_indices(labels, 0.2, seed=0)['test']
    b = digits_split_indices(labels, 0.2, seed=0)['test']
    c = digits_split_indices(labels, 0.2, seed=1)['test']
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize('split', ['train', 'test'])
def test_samples_are_scaled_uint8_digits(split):
    dataset = SklearnDigits(split=split)
    chosen = digits_split_indices(DIGITS.target, 0.2, 0)[split]
    assert len(dataset) == len(chosen)
    assert dataset.metainfo['classes'] == DIGITS_CLASSES
    assert DIGITS_CLASSES == tuple('0123456789')
    for pos in (0, len(dataset) // 2, len(dataset) - 1):
        info = dataset.get_data_info(pos)
        img, src = info['img'], chosen[pos]
        assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
        assert info['gt_label'] == DIGITS.target[src]
        # Same gray level on the three channels; 0 -> 0, 16 -> 255,
        # monotonic and within rounding of v * 255 / 16.
        assert (img == img[..., :1]).all()
        raw = DIGITS.images[src]
        assert np.abs(img[..., 0] - raw * 255 / 16).max() <= 0.5
        assert (img[..., 0][raw == 16] == 255).all()
        assert (img[..., 0][raw == 0] == 0).all()
    labels = np.array(dataset.get_gt_labels())
    assert np.array_equal(labels, DIGITS.target[chosen])


def test_subset_indices_keep_the_given_order():
    full = SklearnDigits(split='train')
    sub = SklearnDigits(split='train', indices=[5, 1, 3])
    assert len(sub) == 3
    for i, j in enumerate([5, 1, 3]):
        assert np.array_equal(sub.get_data_info(i)['img'],
                              full.get_data_info(j)['img'])


@pytest.mark.parametrize('config',
                         ['adder_r20_digits.py', 'cnn_r20_digits.py'])
def test_config_pipelines_upsample_to_32x32(config):
    cfg = Config.fromfile(osp.join(REPO, 'configs', config))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = DATASETS.build(cfg[loader].dataset)
        assert isinstance(dataset, SklearnDigits)
        packed = dataset[0]
        assert tuple(packed['inputs'].shape) == (3, 32, 32)
        assert packed['data_samples'].gt_label.item() == \
            dataset.get_data_info(0)['gt_label']
    assert cfg.train_dataloader.dataset.split == 'train'
    assert cfg.val_dataloader.dataset.split == 'test'
    assert cfg.test_dataloader.dataset.split == 'test'


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='split'):
        SklearnDigits(split='val')
    for test_ratio in (1.5, '0.2', None, True):
        with pytest.raises(ValueError, match='test_ratio'):
            SklearnDigits(test_ratio=test_ratio)
    # None seeded from the clock: train and test drew different splits and
    # shared ~290 of the 359 test images
    for seed in (None, 1.5, -1, 2**32):
        with pytest.raises(ValueError, match='seed'):
            SklearnDigits(seed=seed)
    # one class of ~180 images keeps none (or all) of them for testing
    for test_ratio, empty in ((0.001, 'test'), (0.999, 'train')):
        with pytest.raises(ValueError, match=f'leaves the {empty} split'):
            SklearnDigits(test_ratio=test_ratio)
    with pytest.raises(ValueError, match='data_root'):
        SklearnDigits(data_root='data/digits')
