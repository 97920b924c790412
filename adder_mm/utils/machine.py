"""The machine a measurement ran on, for the header of every table."""
import os
import platform
import re
import time

# CPU features that decide which kernels run (and how fast oneDNN is).
ISA_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni',
             'avx_vnni', 'amx_tile')


def machine_info():
    """dict: cpu (model name), isa (flags of ISA_FLAGS it has), cores,
    torch version, gpu (name or None), date."""
    import torch
    model, flags = platform.processor(), set()
    try:
        with open('/proc/cpuinfo') as f:
            text = f.read()
        m = re.search(r'model name\s*:\s*(.*)', text)
        model = m.group(1).strip() if m else model
        # Virtual machines often show a bare 'AMD EPYC': the family and
        # model numbers tell the generation (AMD family 25: Zen 3/4, 26:
        # Zen 5).
        fam = re.search(r'cpu family\s*:\s*(\d+)', text)
        num = re.search(r'\nmodel\s*:\s*(\d+)', text)
        if fam and num:
            model += f' (family {fam.group(1)} model {num.group(1)})'
        m = re.search(r'flags\s*:\s*(.*)', text)
        flags = set(m.group(1).split()) if m else set()
    except OSError:
        pass
    gpu = (torch.cuda.get_device_name()
           if torch.cuda.is_available() else None)
    return dict(cpu=model, isa=[f for f in ISA_FLAGS if f in flags],
                cores=os.cpu_count(), torch=torch.__version__, gpu=gpu,
                date=time.strftime('%Y-%m-%d'))


def describe(info=None):
    """One line: 'AMD EPYC (avx2, fma, avx512f), 2 cores, torch 2.14.1,
    2026-12-01' (and the GPU when there is one)."""
    info = info or machine_info()
    gpu = f'{info["gpu"]}, ' if info.get('gpu') else ''
    return (f'{gpu}{info["cpu"]} ({", ".join(info["isa"]) or "no AVX2"}), '
            f'{info["cores"]} cores, torch {info["torch"]}, {info["date"]}')
