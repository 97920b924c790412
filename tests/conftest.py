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


CPU_ISAS = ('generic', 'avx2', 'avx512')


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Run the test with the CPU kernels capped at each instruction-set
    level (adder_mm.ops.set_cpu_isa); levels above this CPU's are skipped
    with the reason, the portable level always runs."""
    from adder_mm.ops import ext_info, machine_cpu_isa, set_cpu_isa
    if not ext_info()['cpu']:
        pytest.skip('adder_mm._ext is not built: ' + str(ext_info()['error']))
    best = machine_cpu_isa()
    if CPU_ISAS.index(request.param) > CPU_ISAS.index(best):
        pytest.skip(f'this CPU has no {request.param} (best level: {best})')
    before = set_cpu_isa(request.param)
    try:
        assert ext_info()['cpu_isa'] == request.param
        yield request.param
    finally:
        set_cpu_isa(before)
