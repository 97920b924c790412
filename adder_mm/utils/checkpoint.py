"""Let torch>=2.6's ``weights_only`` loader read MMEngine checkpoints.

torch.load defaults to ``weights_only=True`` since torch 2.6; MMEngine 0.10.7
pickles its message hub (``HistoryBuffer`` with numpy arrays and scalars) into
every checkpoint, so ``--resume`` and ``load_from`` fail. We allow-list exactly
the classes those checkpoints reference, never turning weights_only off.

One more global is needed: ``HistoryBuffer.__getstate__`` stores its
statistics methods (``HistoryBuffer.min`` ...), which pickle protocol 2 (the
one torch.save uses) writes as ``getattr(HistoryBuffer, 'min')``. The builtin
``getattr`` would let a pickle walk from any allowed object to arbitrary code,
so the ``builtins.getattr`` name is bound to :func:`history_buffer_getattr`,
which fetches those four methods and refuses everything else.
"""
import pickle

import torch

from .fileio import write_atomic

# The statistics methods HistoryBuffer registers itself (and so pickles).
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def history_buffer_getattr(obj, name):
    """``getattr`` as a weights_only checkpoint may use it.

    Returns ``getattr(HistoryBuffer, name)`` for HistoryBuffer's own
    statistics methods; raises ``pickle.UnpicklingError`` for any other
    object or name.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'weights_only load refused getattr({obj!r}, {name!r}): adder_mm only '
        'allows HistoryBuffer statistics methods '
        f'{_HISTORY_BUFFER_METHODS} through builtins.getattr')


def checkpoint_safe_globals():
    """The globals MMEngine's own checkpoints need, as a list.

    Classes and functions, plus one ``(history_buffer_getattr,
    'builtins.getattr')`` pair (the form torch's add_safe_globals takes for a
    global loaded under another name).
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer

    # numpy's pickles name the array reconstructor and dtype classes through
    # numpy.core (numpy < 2) or numpy._core (numpy >= 2).
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = sorted({type(np.dtype(t)) for t in np.typecodes['All']
                            if t not in 'OMm'} | {type(np.dtype('O'))},
                           key=lambda c: c.__name__)
    return [HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar
            ] + dtype_classes + [(history_buffer_getattr, 'builtins.getattr')]


def register_checkpoint_safe_globals():
    """Allow-list MMEngine's checkpoint classes for weights_only loading."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:  # torch < 2.4 has no weights_only allow-list
        add(checkpoint_safe_globals())


URL_PREFIXES = ('http://', 'https://')


def url_cache_path(url):
    """Where torch.hub (and so MMEngine) keeps a downloaded checkpoint:
    ``<hub dir>/checkpoints/<file name of the URL>``."""
    import os.path as osp
    from urllib.parse import urlparse
    return osp.join(torch.hub.get_dir(), 'checkpoints',
                    osp.basename(urlparse(url).path))


def load_url_safely(filename, map_location=None, model_dir=None,
                    progress=False):
    """MMEngine's http(s) checkpoint loader with ``weights_only=True``: it
    calls torch.hub's ``load_state_dict_from_url``, whose default is
    ``weights_only=False`` (a served file could run code). Rank 0
    downloads first, as MMEngine's does."""
    from mmengine.dist import get_dist_info

    def load():
        return torch.hub.load_state_dict_from_url(
            filename, model_dir=model_dir, map_location=map_location,
            progress=progress, weights_only=True)

    rank, world = get_dist_info()
    checkpoint = load() if rank == 0 else None
    if world > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = load()
    return checkpoint


def register_safe_url_loader():
    """Replace MMEngine's http(s) checkpoint loader by
    :func:`load_url_safely` (``load_from``, ``--resume``, ``init_cfg``
    pretrained weights given as URLs)."""
    from mmengine.runner import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes=URL_PREFIXES,
                                     force=True)(load_url_safely)


def save_atomic(obj, path):
    """``torch.save(obj, path)`` through :func:`write_atomic`."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))
