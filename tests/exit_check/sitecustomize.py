"""Loaded by every Python process of a test run that puts this folder on
PYTHONPATH (tests/test_tools.py, distributed training): each torchrun
worker reports at exit how many gloo threads it still has. Threads alive
then can abort the process during interpreter finalization, so the test
expects none."""
import atexit
import os
import sys


def _report():
    if 'RANK' not in os.environ or 'torch.distributed' not in sys.modules:
        return  # not a torchrun worker
    tasks = '/proc/self/task'
    names = []
    for tid in os.listdir(tasks):
        try:
            with open(f'{tasks}/{tid}/comm') as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    gloo = sum('gloo' in name for name in names)
    print(f'exit check: rank {os.environ["RANK"]} has {gloo} gloo threads',
          file=sys.stderr, flush=True)


atexit.register(_report)
