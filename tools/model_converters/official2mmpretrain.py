"""Convert the AdderNet paper's released checkpoints to adder_mm checkpoints.

    python tools/model_converters/official2mmpretrain.py SRC DST \\
        --arch {resnet20,resnet32,resnet50}

DST loads with strict=True into the model of configs/adder_r20_cifar10.py,
adder_r32_cifar10.py or adder_r50_imagenet.py; the key mapping is in
adder_mm/apis/official_weights.py.
"""
import argparse
import os.path as osp

from adder_mm.apis import run_tool
from adder_mm.apis.official_weights import ARCHS, convert_file


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert the AdderNet paper\'s checkpoints to adder_mm.')
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='output checkpoint for adder_mm')
    parser.add_argument('--arch', required=True, choices=sorted(ARCHS))
    args = parser.parse_args(argv)
    # read_checkpoint (in convert_file) names a missing or unreadable src.
    n, classes, bias = convert_file(args.src, args.dst, args.arch)
    print(f'{args.arch}: {n} tensors, {classes} classes, head bias={bias} '
          f'-> {args.dst}')


if __name__ == '__main__':
    run_tool(main, prog=osp.basename(__file__))
