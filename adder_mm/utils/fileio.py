"""Files written whole or not at all."""
import os
import os.path as osp


def write_atomic(path, write):
    """Call ``write(tmp)`` to write a temporary file in ``path``'s folder,
    then rename it to ``path``: a failed or interrupted write leaves nothing
    half-written (and an existing ``path`` as it was)."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(path)}.tmp{os.getpid()}')
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
