"""Shared test fixtures (torch and pytest only)."""
import os
import subprocess
import sys

import pytest


@pytest.fixture
def run_python():
    """Run Python code in a fresh interpreter; return its stdout.

    For what one process can only show from its start: which modules an
    import pulls in, what a first call does. Fails the test, with the tail
    of stderr, unless the code exits 0 and its last printed line is 'ok'.
    """

    def run(code, env=None, timeout=600):
        if not isinstance(code, str):
            code = '\n'.join(code)
        out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                             text=True, timeout=timeout,
                             env=None if env is None else {**os.environ,
                                                           **env})
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip().endswith('ok'), out.stdout[-2000:]
        return out.stdout

    return run
