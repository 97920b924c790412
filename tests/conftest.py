"""Shared test fixtures (torch and pytest only)."""
import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@pytest.fixture(scope='session')
def tool_module():
    """A script of this repository as a module, to call its functions in
    this process: ``tool_module('tools/train.py')`` (path relative to the
    repository root)."""

    def load(path):
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(
            f'_tool_{name}', os.path.join(REPO, path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope='session')
def run_tool():
    """Run a script of this repository as a user would, in a fresh process
    with CUDA hidden: ``run_tool(['tools/train.py', cfg, ...], cwd=None,
    env=None, timeout=1800)`` -> CompletedProcess (text output captured).
    Paths are relative to the repository root; a .py runs with this
    Python, a .sh with bash; ``cwd`` defaults to the repository root."""

    def run(argv, cwd=None, env=None, timeout=1800):
        script = argv[0] if os.path.isabs(argv[0]) else os.path.join(
            REPO, argv[0])
        prefix = [sys.executable] if script.endswith('.py') else ['bash']
        return subprocess.run(
            prefix + [script] + [str(a) for a in argv[1:]],
            cwd=cwd or REPO, capture_output=True, text=True,
            timeout=timeout,
            env={**os.environ, 'CUDA_VISIBLE_DEVICES': '', **(env or {})})

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
