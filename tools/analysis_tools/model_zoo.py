"""Regenerate the model zoo from the configs.

    python tools/analysis_tools/model_zoo.py [--check]

Counts the parameters, multiplications and additions of every model in
configs/metafile.yml (one forward pass at the config's input size, on meta
tensors), writes them into the metafile's Metadata and the table of
configs/README.md (between its model-zoo markers), with our measured top-1
where docs/results/digits.json (tools/analysis_tools/seeds.py --out) has one.
``--check`` writes nothing and fails when either file is out of date.
"""
import argparse
import os.path as osp
import sys

from adder_mm.apis.model_zoo import SECTION, render
from adder_mm.utils.markdown import replace_section

_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

METAFILE = osp.join(_ROOT, 'configs', 'metafile.yml')
README = osp.join(_ROOT, 'configs', 'README.md')
RESULTS = osp.join(_ROOT, 'docs', 'results', 'digits.json')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true',
                        help='fail if the files are out of date')
    args = parser.parse_args(argv)
    meta, block = render(METAFILE, _ROOT, RESULTS)
    with open(README) as f:
        readme = replace_section(f.read(), SECTION, block)
    stale = []
    for path, text in ((METAFILE, meta), (README, readme)):
        with open(path) as f:
            if f.read() != text:
                stale.append(path)
                if not args.check:
                    with open(path, 'w') as out:
                        out.write(text)
    if args.check and stale:
        sys.exit('model_zoo.py: out of date: ' + ', '.join(
            osp.relpath(p, _ROOT) for p in stale) +
            '; run python tools/analysis_tools/model_zoo.py')
    print('\n'.join(['updated ' + osp.relpath(p, _ROOT) for p in stale]) or
          'up to date')


if __name__ == '__main__':
    main()
