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


def write_text_atomic(path, text, encoding='utf-8'):
    """Write the string ``text`` to ``path`` through :func:`write_atomic`."""
    def write(tmp):
        with open(tmp, 'w', encoding=encoding) as f:
            f.write(text)
    write_atomic(path, write)


def register_atomic_local_backend():
    """Make MMEngine's local file backend write through
    :func:`write_atomic`: the Runner's checkpoints (written in place by
    MMEngine 0.10.7, so a full disk or a kill mid-save left a file that
    does not load) and every other local ``put``."""
    from mmengine.fileio import LocalBackend, register_backend

    class AtomicLocalBackend(LocalBackend):
        """LocalBackend whose writes are whole or absent."""

        def put(self, obj, filepath):
            def write(tmp):
                with open(tmp, 'wb') as f:
                    f.write(obj)
            write_atomic(str(filepath), write)

        def put_text(self, obj, filepath, encoding='utf-8'):
            self.put(obj.encode(encoding), filepath)

    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
