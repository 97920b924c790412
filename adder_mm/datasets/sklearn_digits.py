"""scikit-learn's bundled handwritten digits as an MMPretrain dataset.

The data ships inside scikit-learn (``sklearn.datasets.load_digits``), so a
fresh machine can train and evaluate without any download.
"""
from typing import List, Optional

import numpy as np
from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

DIGITS_CLASSES = tuple(str(i) for i in range(10))


def digits_split_indices(labels: np.ndarray, test_ratio: float,
                         seed: int) -> dict:
    """The fixed stratified train/test split of the digits, as indices.

    For every class, the samples of that class (in scikit-learn's order) are
    shuffled with ``np.random.RandomState(seed)`` (the legacy generator, whose
    stream numpy keeps stable across releases) and the first
    ``round(test_ratio * n_class)`` go to the test split. Both index lists
    are returned sorted, i.e. in scikit-learn's order.

    Args:
        labels (np.ndarray): Class labels, shape (N,), ints in 0..9.
        test_ratio (float): Fraction of each class held out, in (0, 1).
        seed (int): Seed of the shuffle.

    Returns:
        dict: ``{'train': np.ndarray, 'test': np.ndarray}`` of int64 indices.
    """
    check_split_args(test_ratio, seed)
    rng = np.random.RandomState(seed)
    test = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_test = int(round(test_ratio * len(members)))
        test.append(members[rng.permutation(len(members))[:n_test]])
    test = np.sort(np.concatenate(test)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test).astype(np.int64)
    for name, split in (('test', test), ('train', train)):
        if len(split) == 0:
            raise ValueError(f'test_ratio={test_ratio!r} leaves the {name} '
                             f'split of {len(labels)} images empty')
    return {'train': train, 'test': test}


def check_split_args(test_ratio, seed):
    """The split's arguments: ``test_ratio`` a number in (0, 1) and ``seed``
    an int in [0, 2**32) (``None`` would seed from the clock and give the
    train and test datasets different splits that share images)."""
    if isinstance(test_ratio, bool) or not isinstance(
            test_ratio, (int, float)) or not 0.0 < test_ratio < 1.0:
        raise ValueError(f'test_ratio must be a number in (0, 1), got '
                         f'{test_ratio!r}')
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed < 2**32:
        raise ValueError(f'seed must be an int in [0, 2**32) (the split is '
                         f'fixed by it), got {seed!r}')


@DATASETS.register_module()
class SklearnDigits(BaseDataset):
    """The 1,797 8x8 handwritten digits bundled with scikit-learn.

    Data: ``sklearn.datasets.load_digits()`` (UCI optical recognition of
    handwritten digits, 10 classes, gray levels 0..16, roughly 180 images per
    class). Nothing is downloaded.

    Split (fixed, stratified): with the defaults ``test_ratio=0.2, seed=0``
    every class keeps 20% of its images (rounded) for testing, picked by
    ``np.random.RandomState(0)`` - 1,438 train and 359 test images. See
    :func:`digits_split_indices`.

    Each sample is ``dict(img=uint8 array (8, 8, 3), gt_label=int)``: the gray
    level is scaled from 0..16 to 0..255 (``round(v * 255 / 16)``, ink bright
    on a black background) and repeated on three channels, so CIFAR-style
    3-channel stems and image-file inference (which loads 3-channel images)
    work unchanged. The images are 8x8: the pipeline must upsample them, e.g.
    ``dict(type='Resize', scale=(32, 32), interpolation='bilinear')`` first,
    as ``configs/_base_/datasets/digits_bs64.py`` does.

    Args:
        split (str): ``'train'`` or ``'test'``. Defaults to ``'train'``.
        test_ratio (float): Fraction of each class in the test split.
            Defaults to 0.2.
        seed (int): Seed of the split (not of training). Defaults to 0.
        pipeline (Sequence): Transforms applied to each sample.
        indices (int | Sequence[int], optional): Use a subset of the split
            (first/last N, or these positions in this order).
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`
            (``metainfo``, ``test_mode``, ``lazy_init``, ...); ``ann_file``,
            ``data_root`` and ``data_prefix`` are not used.
    """

    METAINFO = {'classes': DIGITS_CLASSES}

    def __init__(self,
                 split: str = 'train',
                 test_ratio: float = 0.2,
                 seed: int = 0,
                 pipeline=(),
                 indices=None,
                 metainfo: Optional[dict] = None,
                 test_mode: bool = False,
                 **kwargs):
        if split not in ('train', 'test'):
            raise ValueError(
                "SklearnDigits split must be 'train' or 'test', got "
                f'{split!r}')
        for key in ('ann_file', 'data_root', 'data_prefix'):
            if kwargs.pop(key, None):
                raise ValueError(
                    f'SklearnDigits reads the data bundled with scikit-learn '
                    f'and takes no {key}')
        # Validate before BaseDataset calls load_data_list.
        check_split_args(test_ratio, seed)
        self.split = split
        self.test_ratio = test_ratio
        self.seed = seed
        super().__init__(
            ann_file='',
            metainfo=metainfo,
            pipeline=pipeline,
            indices=indices,
            test_mode=test_mode,
            **kwargs)

    def load_data_list(self) -> List[dict]:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ImportError(
                'SklearnDigits needs scikit-learn: pip install scikit-learn'
            ) from e
        digits = load_digits()
        labels = digits.target.astype(np.int64)
        chosen = digits_split_indices(labels, self.test_ratio,
                                      self.seed)[self.split]
        # 0..16 -> 0..255; exact for 0 and 16, rounded in between.
        gray = np.rint(digits.images[chosen] * (255.0 / 16.0)).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        return [
            dict(img=np.ascontiguousarray(img), gt_label=int(label))
            for img, label in zip(rgb, labels[chosen])
        ]

    def extra_repr(self) -> List[str]:
        return [
            f'Split: {self.split} (stratified, test_ratio={self.test_ratio},'
            f' seed={self.seed})', 'Source: sklearn.datasets.load_digits'
        ]
