"""Build and install adder_mm with its compiled op extension ``adder_mm._ext``.

Environment variables:
    ADDER_MM_WITH_OPS=0   install without compiled ops (pure-PyTorch fallback).
    FORCE_CUDA=1          build the CUDA kernels even when no GPU is visible
                          (needs a CUDA build of torch and nvcc).
    TORCH_CUDA_ARCH_LIST  CUDA archs to build, default "7.0;8.0;9.0+PTX"
                          ("7.5;8.0;9.0+PTX" with CUDA >= 13, which has no
                          sm_70).
    CUDA_HOME             the CUDA toolkit; found from nvcc when unset.
    MAX_JOBS              parallel compile jobs (ninja).
"""
import glob
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))


def read_version():
    ns = {}
    with open(osp.join(ROOT, 'adder_mm', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


def read_requirements(name):
    reqs = []
    with open(osp.join(ROOT, 'requirements', name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line and not line.startswith('-'):
                reqs.append(line)
    return reqs


def find_cuda_home():
    """Locate the real CUDA toolkit.

    torch guesses CUDA_HOME from the directory of ``nvcc`` on PATH; where that
    nvcc is a wrapper script (e.g. /usr/local/bin/nvcc) the guess is
    /usr/local and linking fails with ``cannot find -lcudart``. Resolve the
    wrapper to the toolkit that really holds lib64/libcudart.
    """
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH')]
    nvcc = shutil.which('nvcc')
    if nvcc:
        candidates.append(osp.dirname(osp.dirname(osp.realpath(nvcc))))
        try:
            with open(nvcc, 'r', errors='ignore') as f:
                head = f.read(4096)
            for tok in head.replace('"', ' ').split():
                if tok.endswith('/bin/nvcc') and osp.isfile(tok):
                    candidates.append(osp.dirname(osp.dirname(tok)))
        except OSError:
            pass
    candidates.append('/usr/local/cuda')
    for c in candidates:
        if c and osp.isfile(osp.join(c, 'bin', 'nvcc')) and (
                glob.glob(osp.join(c, 'lib64', 'libcudart*'))
                or glob.glob(osp.join(c, 'lib', 'libcudart*'))
                or glob.glob(
                    osp.join(c, 'targets', '*', 'lib', 'libcudart*'))):
            return osp.realpath(c)
    return None


def get_extensions():
    if os.getenv('ADDER_MM_WITH_OPS', '1') == '0':
        print('adder_mm: ADDER_MM_WITH_OPS=0, building no compiled ops')
        return [], {}

    cuda_home = find_cuda_home()
    if cuda_home:
        # Must be set before torch.utils.cpp_extension is imported: it reads
        # CUDA_HOME once at import time.
        os.environ['CUDA_HOME'] = cuda_home
    import torch
    from torch.utils.cpp_extension import (
        BuildExtension,
        CppExtension,
        CUDAExtension,
    )

    sources = sorted(
        glob.glob(osp.join('csrc', 'pytorch', '*.cpp')) +
        glob.glob(osp.join('csrc', 'pytorch', 'cpu', '*.cpp')))
    define_macros = []
    # No -std flag: torch's BuildExtension picks the standard its headers need
    # (C++20 for torch 2.14, C++17 for older releases).
    extra_compile_args = {'cxx': ['-O3', '-Wall']}
    extra_link_args = []
    # at::parallel_for is a header template: with torch's OpenMP backend it
    # runs in parallel only in code compiled with -fopenmp; without it every
    # CPU kernel silently runs on one thread. libgomp is linked by soname,
    # so at run time the copy torch already loaded is reused (one runtime).
    backend = [
        line for line in torch.__config__.parallel_info().splitlines()
        if 'parallel backend' in line
    ]
    backend = backend[0].split(':')[-1].strip() if backend else 'unknown'
    if backend == 'OpenMP' and sys.platform.startswith('linux'):
        extra_compile_args['cxx'].append('-fopenmp')
        extra_link_args.append('-fopenmp')
    else:
        print('adder_mm: WARNING: building without OpenMP (torch parallel '
              f'backend {backend}, platform {sys.platform}); the CPU kernels '
              'will run on one thread')
    include_dirs = [osp.join(ROOT, 'csrc', 'common')]

    force_cuda = os.getenv('FORCE_CUDA', '0') == '1'
    want_cuda = torch.cuda.is_available() or force_cuda
    use_cuda = (want_cuda and torch.version.cuda is not None
                and cuda_home is not None)
    if force_cuda and not use_cuda:
        raise RuntimeError(
            'FORCE_CUDA=1 but the CUDA kernels cannot be built: '
            f'torch.version.cuda={torch.version.cuda}, CUDA toolkit found at '
            f'{cuda_home}. Install a CUDA build of torch and set CUDA_HOME to '
            'the toolkit that contains bin/nvcc and lib64/libcudart.')
    if use_cuda:
        # CUDA 13 dropped Volta (sm_70): nvcc 13 rejects compute_70.
        cuda_major = int(torch.version.cuda.split('.')[0])
        os.environ.setdefault(
            'TORCH_CUDA_ARCH_LIST',
            '7.5;8.0;9.0+PTX' if cuda_major >= 13 else '7.0;8.0;9.0+PTX')
        sources += sorted(
            glob.glob(osp.join('csrc', 'pytorch', 'cuda', '*.cu')))
        define_macros.append(('ADDER_MM_WITH_CUDA', None))
        extra_compile_args['nvcc'] = [
            '-O3', '--expt-relaxed-constexpr',
            '-Xcompiler=-Wall', '-Xptxas=-warn-spills'
        ]
        ext_cls = CUDAExtension
        print(f'adder_mm: building CPU + CUDA kernels (CUDA_HOME={cuda_home}, '
              f'archs {os.environ["TORCH_CUDA_ARCH_LIST"]})')
    else:
        ext_cls = CppExtension
        print('adder_mm: building CPU kernels only '
              '(set FORCE_CUDA=1 to add the CUDA kernels without a GPU)')

    ext = ext_cls(
        name='adder_mm._ext',
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args)
    return [ext], {'build_ext': BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = get_extensions()

setup(
    name='adder_mm',
    version=read_version(),
    description='AdderNets (CVPR 2020) for OpenMMLab: adder2d CPU/CUDA ops, '
    'adder ResNets and the adaptive learning rate for MMPretrain',
    long_description=open(osp.join(ROOT, 'README.md')).read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    include_package_data=False,
    # Ranges here, exact pins in requirements/*.txt (the tested stack). The
    # op (adder_mm.ops), the layers and post-training quantization need
    # torch alone; the OpenMMLab parts (registries, backbones, datasets,
    # tools) come with the 'mm' extra, which the README's commands install
    # through requirements/runtime.txt. mmcv-lite stays out (a user's full
    # mmcv 2.x also provides `mmcv`): requirements/mmcv.txt.
    install_requires=['torch>=2.1', 'numpy'],
    extras_require={
        'mm': [
            'torchvision', 'mmengine>=0.10.4,<1.0', 'mmpretrain>=1.2.0,<2.0',
            'setuptools<82', 'scikit-learn', 'pyyaml'
        ],
        'tests': read_requirements('tests.txt'),
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False)
