"""Dataset folders checked before the Runner is built: every missing or
empty one reported at once, with the layout the dataset expects and where
to get it; no download unless the config asks for one."""
import os
import os.path as osp

from .cfg_options import LOADERS, _accepted_args, _registered_class
from .errors import ToolError


def _datasets(dataset_cfg, key):
    """Yield (dotted key, dataset config) of a dataset config and the ones
    it wraps (RepeatDataset, ConcatDataset, ClassBalancedDataset)."""
    if not isinstance(dataset_cfg, dict):
        return
    yield key, dataset_cfg
    yield from _datasets(dataset_cfg.get('dataset', None), f'{key}.dataset')
    for i, sub in enumerate(dataset_cfg.get('datasets', None) or []):
        yield from _datasets(sub, f'{key}.datasets.{i}')


def _expected_files(cls, root):
    """Files a dataset class with a fixed archive layout (mmpretrain's
    CIFAR10/CIFAR100: base_folder, train_list, test_list, meta) reads."""
    folder = getattr(cls, 'base_folder', None)
    lists = [getattr(cls, a, None) for a in ('train_list', 'test_list')]
    if not folder or not all(isinstance(x, (list, tuple)) for x in lists):
        return []
    names = [entry[0] for lst in lists for entry in lst]
    meta = getattr(cls, 'meta', None)
    if isinstance(meta, dict) and meta.get('filename'):
        names.append(meta['filename'])
    return [osp.join(root, folder, n) for n in names]


def _layout(cls, ds):
    """How the folder should look, for the message."""
    folder = getattr(cls, 'base_folder', None)
    url = getattr(cls, 'url', None)
    if folder:
        where = f' (the archive {url}, extracted)' if url else ''
        return f'expected {folder}/ inside it{where}'
    split = ds.get('split')
    if split:
        return (f'expected {split}/ (images in one folder per class, or '
                f'as listed in meta/{split}.txt) inside it')
    return 'expected the images (and ann_file, if the config names one)'


def prepare_data_roots(cfg, config_path, fields=LOADERS):
    """Check the ``data_root`` of every dataset in the dataloaders
    ``fields`` and turn off automatic downloads the config did not ask for.

    A dataset class that can download (a ``download`` argument, e.g.
    mmpretrain's CIFAR10) gets ``download=False`` unless the config sets
    it: a missing dataset is then reported here, not met by a download
    attempt (which fails without network). Remote roots (``s3://``) are
    not checked.

    Raises:
        ToolError: listing every missing or incomplete folder.
    """
    scope = cfg.get('default_scope', None)
    problems, downloads = [], []
    seen = set()
    for field in fields:
        loader = cfg.get(field, None)
        if not loader:
            continue
        for key, ds in _datasets(loader.get('dataset', None),
                                 f'{field}.dataset'):
            cls = _registered_class(ds.get('type'), scope)
            can_download = cls is not None and \
                'download' in _accepted_args(cls)[0]
            if can_download and 'download' not in ds:
                ds['download'] = False
            root = ds.get('data_root', None)
            if not root or '://' in str(root) or (can_download
                                                  and ds.get('download')):
                continue  # remote, or fetched by the dataset itself
            path = osp.abspath(osp.expanduser(str(root)))
            if (path, key.split('.')[0]) in seen:
                continue
            seen.add((path, key.split('.')[0]))
            problem = _root_problem(path, cls, ds)
            if problem:
                problems.append(
                    f'{key}.data_root = {root!r} ({path}): {problem}; '
                    f'{_layout(cls, ds)}')
                if can_download:
                    downloads.append(f'{key}.download=True')
    if problems:
        wants = sorted({p.split(' = ')[0] for p in problems})
        fetch = ('. Or let the dataset download itself (needs network): '
                 '--cfg-options ' + ' '.join(downloads)) if downloads else ''
        raise ToolError(
            f'dataset not found for {config_path}:\n  ' + '\n  '.join(problems)
            + '\nPut the data there, or point the config at it with '
            '--cfg-options ' + ' '.join(f'{w}=/path/to/data' for w in wants) +
            fetch + '. configs/adder_r20_digits.py needs no dataset folder.')


def _emptiness(folder):
    """'is empty', 'cannot be read (why)', or None for a folder with
    entries."""
    try:
        return None if any(True for _ in os.scandir(folder)) else 'is empty'
    except OSError as e:
        return f'cannot be read ({e.strerror})'


def _root_problem(path, cls, ds):
    if not osp.isdir(path):
        return 'the folder does not exist'
    problem = _emptiness(path)
    if problem:
        return f'the folder {problem}'
    expected = _expected_files(cls, path)
    missing = [f for f in expected if not osp.isfile(f)]
    if missing:
        names = ', '.join(osp.relpath(f, path) for f in missing[:4])
        more = f' and {len(missing) - 4} more' if len(missing) > 4 else ''
        return f'missing {names}{more}'
    if expected:  # a fixed archive layout: no split folders
        return None
    split = ds.get('split')
    prefix = ds.get('data_prefix')
    if split and not prefix and cls is not None:
        folder = osp.join(path, split)
        if not osp.isdir(folder):
            return f'no {split}/ folder in it'
        problem = _emptiness(folder)
        if problem:
            return f'its {split}/ folder {problem}'
    return None
