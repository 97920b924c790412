"""Count multiplications, additions and energy of one forward pass of a config.

    python tools/analysis_tools/count_ops.py CONFIG [--shape H W]
        [--compare OTHER_CONFIG] [--bits {fp32,fp16,int32,int8}]
        [--energy TABLE.json] [--quantized Q.pth] [--work-dir DIR]
        [--out [FILE.json]] [--plot [FILE.png]] [--markdown [FILE.md]]

Builds the model of CONFIG, runs one forward pass on a [1, C, H, W] input
with hooks on every AdderConv2d, convolution and Linear layer (backbone, neck
and head), prints a per-layer table and totals, the estimated energy (45 nm
figures of Horowitz, ISSCC 2014, or --energy) and, with --compare, the saving
against the other config (usually the CNN twin). Conventions: see
adder_mm/analysis/op_counter.py. ``--out`` and ``--plot`` without a file name
write ops.json / ops.png into the work dir (default
work_dirs/count_ops/<config name>), never into the current folder.
``--quantized Q.pth`` (a checkpoint of tools/quantize.py) also counts the
quantized model, whose integer ops are priced at their own precision
(int8 subtractions, int32 accumulations), next to the float model and
``--compare``; ``--markdown`` writes that energy table. An ``--energy`` table
may price an op at 0 pJ; a model left without energy then has no saving or
ratio against the other (n/a, null in --out).
"""
import argparse
import json
import os
import os.path as osp

from adder_mm.analysis.op_counter import CONVENTION, load_energy_table
from adder_mm.apis import (
    cfg_options_action,
    check_markdown_path,
    check_out_path,
    run_tool,
)
from adder_mm.apis.op_count import (
    compare,
    comparison_text,
    count_config,
    energy_table,
    plot,
    report,
)
from adder_mm.utils.markdown import write_section


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Count multiplications, additions and energy per layer')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--shape', type=int, nargs='+', default=None,
        help='input H W (or one size for both); default: from the '
        'config pipeline, else 224')
    parser.add_argument(
        '--channels', type=int, default=None,
        help='input channels, those of the model\'s first layer; default: '
        'from data_preprocessor mean, else 3')
    parser.add_argument('--compare', default=None,
                        help='second config (e.g. the CNN twin)')
    parser.add_argument('--bits', default='fp32',
                        help='energy table row: fp32, fp16, int32, int8 '
                        '(or a row added by --energy)')
    parser.add_argument('--energy', default=None,
                        help='JSON {bits: {"add": pJ, "mult": pJ}} '
                        'overriding/extending the 45 nm table (0 pJ allowed; '
                        'a --compare saving without value reads n/a)')
    parser.add_argument(
        '--quantized', default=None,
        help='a quantized checkpoint of CONFIG (tools/quantize.py): count '
        'the quantized model too')
    parser.add_argument('--markdown', nargs='?', const='', default=None,
                        help='write the energy table into this markdown file '
                        '(default: <work-dir>/energy.md), section --section')
    parser.add_argument('--section', default='energy',
                        help='section of --markdown (default energy)')
    parser.add_argument(
        '--work-dir', default=None,
        help='where --out/--plot without a file name write (default '
        'work_dirs/count_ops/<config name>)')
    parser.add_argument('--out', nargs='?', const='', default=None,
                        help='write JSON (default: <work-dir>/ops.json)')
    parser.add_argument('--plot', nargs='?', const='', default=None,
                        help='write a bar chart PNG of mults/adds per stage '
                        '(default: <work-dir>/ops.png)')
    parser.add_argument('--group-depth', type=int, default=2,
                        help='name parts that make a stage (default 2: '
                        'backbone.layer1)')
    parser.add_argument(
        '--device', default='meta', choices=['meta', 'cpu', 'cuda'],
        help='device of the forward pass; meta (default) computes shapes '
        'only, which is all the counts need, and falls back to cpu when the '
        'model cannot run on meta tensors')
    parser.add_argument(
        '--cfg-options', nargs='+', action=cfg_options_action(),
        default=None,
        help='override config entries of both configs, e.g. '
        'model.backbone.style=caffe')
    parser.add_argument('--per-layer', action=argparse.BooleanOptionalAction,
                        default=True, help='print the per-layer table')
    args = parser.parse_args(argv)
    work_dir = args.work_dir or osp.join(
        'work_dirs', 'count_ops', osp.splitext(osp.basename(args.config))[0])
    if args.out == '':
        args.out = osp.join(work_dir, 'ops.json')
    if args.plot == '':
        args.plot = osp.join(work_dir, 'ops.png')
    if args.markdown == '':
        args.markdown = osp.join(work_dir, 'energy.md')
    if args.shape is not None:
        if len(args.shape) == 1:
            args.shape = args.shape * 2
        if len(args.shape) != 2 or min(args.shape) < 1:
            parser.error(f'--shape takes H W (or one size), positive, got '
                         f'{args.shape}')
    if args.channels is not None and args.channels < 1:
        parser.error(f'--channels must be positive, got {args.channels}')
    if args.group_depth < 1:
        parser.error(f'--group-depth must be >= 1, got {args.group_depth}')
    if args.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda: no CUDA device is available')
    # The writers run after the counting; their paths are checked now.
    check_out_path(parser, args.out)
    check_out_path(parser, args.plot, '--plot')
    check_markdown_path(parser, args.markdown, args.section)
    if args.plot and not args.plot.lower().endswith(('.png', '.pdf',
                                                     '.svg')):
        parser.error(f'--plot {args.plot!r}: give a .png, .pdf or .svg file')
    for flag, path in (('config', args.config), ('--compare', args.compare),
                       ('--energy', args.energy),
                       ('--quantized', args.quantized)):
        if path is not None and not osp.isfile(path):
            parser.error(f'{flag}: no such file {path!r}')
    try:
        args.table = load_energy_table(args.energy)
    except ValueError as e:
        parser.error(str(e))
    if args.bits not in args.table:
        parser.error(f'--bits {args.bits!r} not in the energy table '
                     f'{sorted(args.table)}')
    return args


def main(argv=None):
    args = parse_args(argv)
    results = [count_config(args.config, args.shape, args.channels,
                            args.device, args.cfg_options)]
    if args.quantized:
        results.insert(0, count_config(
            args.config, tuple(results[0]['input_shape'][2:]),
            results[0]['input_shape'][1], 'cpu', args.cfg_options,
            quantized=args.quantized))
    if args.compare:
        # Same input as the first model, so the two counts are comparable.
        shape = tuple(results[0]['input_shape'][2:])
        results.append(count_config(
            args.compare, shape, results[0]['input_shape'][1], args.device,
            args.cfg_options, channels_from=f'the input of {args.config}'))
    for r in results:
        print(report(r, args.bits, args.table, args.group_depth,
                     args.per_layer))
        print()
    e = args.table[args.bits]
    print(f'energy per op ({args.bits}): add {e["add"]} pJ, mult '
          f'{e["mult"]} pJ; abs (sign bit) not counted as energy')
    print(f'convention: {CONVENTION}')
    summary = None
    if len(results) > 2 or args.markdown:
        text = energy_table(results, args.bits, args.table)
        print('\n' + text)
        if args.markdown:
            write_section(
                args.markdown, args.section,
                f'Energy of one forward pass at 45 nm (Horowitz, ISSCC 2014; '
                f'float layers at {args.bits}, integer ops at their own '
                f'precision); written by tools/analysis_tools/count_ops.py.'
                f'\n\n{text}')
            print(f'wrote {args.markdown} (section {args.section})')
    if args.compare:
        summary = compare(results[-2], results[-1], args.bits, args.table)
        print('\n' + comparison_text(summary))
    if args.out:
        doc = dict(
            bits=args.bits, energy_table_pj=args.table,
            models=[dict(config=r['config'], input_shape=r['input_shape'],
                         shape_source=r['shape_source'], device=r['device'],
                         **r['ops'].to_dict(args.bits, args.table,
                                            args.group_depth))
                    for r in results],
            comparison=summary)
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(doc, f, indent=2)
        print(f'wrote {args.out}')
    if args.plot:
        os.makedirs(osp.dirname(osp.abspath(args.plot)), exist_ok=True)
        plot(results, args.plot, args.group_depth)
        print(f'wrote {args.plot}')
    return results, summary


if __name__ == '__main__':
    run_tool(main, prog=osp.basename(__file__))
