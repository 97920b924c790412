"""The process's random number generators as one value (torch only).

Python's ``random``, NumPy's global generator, torch's CPU generator and
every initialised CUDA device's generator: what data augmentation and
stochastic layers draw from. ``rng_states`` returns plain Python values and
tensors (loadable with ``torch.load(weights_only=True)``); ``fork_rng``
runs a block without disturbing them.
"""
import contextlib
import random

import numpy as np
import torch

_NUMPY_KIND = 'MT19937'


def rng_states():
    """The current states of all generators, as a dict."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = dict(
        python=random.getstate(),
        numpy=dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                   has_gauss=int(has_gauss), gauss=float(gauss)),
        torch=torch.get_rng_state(),
        cuda=(torch.cuda.get_rng_state_all()
              if torch.cuda.is_available() and torch.cuda.is_initialized()
              else []))
    assert kind == _NUMPY_KIND
    return states


def set_rng_states(states):
    """Restore what :func:`rng_states` returned. CUDA states are restored
    only where their number matches this process's devices (a checkpoint
    from another machine keeps the CPU generators' exactness)."""
    version, internal, gauss = states['python']
    # pickling turns the tuples into lists on some paths
    random.setstate((version, tuple(internal), gauss))
    npst = states['numpy']
    np.random.set_state((_NUMPY_KIND, npst['keys'].numpy().astype(np.uint32),
                         npst['pos'], npst['has_gauss'], npst['gauss']))
    torch.set_rng_state(states['torch'])
    cuda = states.get('cuda') or []
    if cuda and torch.cuda.is_available() and \
            len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def fork_rng():
    """Run the block with the generators' states restored afterwards, so
    that what it draws does not change what the caller draws next."""
    saved = rng_states()
    try:
        yield
    finally:
        set_rng_states(saved)
