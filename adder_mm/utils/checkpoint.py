"""Let torch>=2.6's ``weights_only`` loader read MMEngine checkpoints.

torch.load defaults to ``weights_only=True`` since torch 2.6; MMEngine 0.10.7
pickles its message hub (``HistoryBuffer`` with numpy arrays and scalars) into
every checkpoint, so ``--resume`` and ``load_from`` fail. We allow-list exactly
the classes those checkpoints reference, never turning weights_only off.
"""
import torch


def checkpoint_safe_globals():
    """The globals MMEngine's own checkpoints need, as a list."""
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
            ] + dtype_classes


def register_checkpoint_safe_globals():
    """Allow-list MMEngine's checkpoint classes for weights_only loading."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:  # torch < 2.4 has no weights_only allow-list
        add(checkpoint_safe_globals())
