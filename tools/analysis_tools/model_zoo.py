"""Regenerate the model zoo from the configs.

    python tools/analysis_tools/model_zoo.py [--check] [--metafile FILE]
        [--readme FILE] [--results FILE.json | --no-results]

Counts the parameters, multiplications and additions of every model in
configs/metafile.yml (one forward pass at the config's input size, on meta
tensors), writes them into the metafile's Metadata and the table of
configs/README.md (between its model-zoo markers), with our measured top-1
where docs/results/digits.json (tools/analysis_tools/seeds.py --out) has one.
``--check`` writes nothing and fails when either file is out of date.
A malformed metafile or results file, or a README with one model-zoo marker,
stops the tool with an error before anything is counted; the files are
written whole or not at all.
"""
import argparse
import os.path as osp
import sys

from adder_mm.apis import check_markdown_path, check_out_path, run_tool
from adder_mm.apis.model_zoo import SECTION, regenerate
from adder_mm.utils.fileio import write_text_atomic

_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

METAFILE = osp.join(_ROOT, 'configs', 'metafile.yml')
README = osp.join(_ROOT, 'configs', 'README.md')
RESULTS = osp.join(_ROOT, 'docs', 'results', 'digits.json')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true',
                        help='fail if the files are out of date')
    parser.add_argument('--metafile', default=METAFILE,
                        help='the metafile (default configs/metafile.yml); '
                        'its Config paths are relative to the repository')
    parser.add_argument('--readme', default=README,
                        help='the markdown file of the table (default '
                        'configs/README.md), section model-zoo')
    results = parser.add_mutually_exclusive_group()
    results.add_argument('--results', default=RESULTS,
                         help='measured top-1, JSON of seeds.py --out '
                         '(default docs/results/digits.json)')
    results.add_argument('--no-results', action='store_const', const=None,
                         dest='results', help='no measured top-1 column')
    args = parser.parse_args(argv)
    for flag, path in (('--metafile', args.metafile),
                       ('--readme', args.readme)):
        if not osp.isfile(path):
            parser.error(f'{flag}: no such file {path!r}')
    if not args.check:
        check_out_path(parser, args.metafile, '--metafile')
        check_markdown_path(parser, args.readme, SECTION, '--readme')
    return args


def _shown(path):
    return osp.relpath(path, _ROOT) if osp.abspath(path).startswith(
        _ROOT + osp.sep) else path


def main(argv=None):
    args = parse_args(argv)
    stale = regenerate(args.metafile, args.readme, _ROOT, args.results)
    if args.check and stale:
        sys.exit('model_zoo.py: out of date: ' + ', '.join(
            _shown(p) for p in stale) +
            '; run python tools/analysis_tools/model_zoo.py')
    if not args.check:
        for path, text in stale.items():
            write_text_atomic(path, text)
    print('\n'.join('updated ' + _shown(p) for p in stale) or 'up to date')


if __name__ == '__main__':
    run_tool(main, prog=osp.basename(__file__))
