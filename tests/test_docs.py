"""The front page and the docs stay what they are meant to be: a README of
at most 250 lines whose measured tables are sections written by the tools
(never empty, each naming the tool and the machine), and links that lead
somewhere."""
import os.path as osp
import re

from adder_mm.utils.markdown import read_section

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
README = open(osp.join(REPO, 'README.md')).read()

# README section -> the tool that writes it, and whether the numbers
# depend on the machine (operation counts do not)
SECTIONS = {
    'digits': ('seeds.py', True),
    'quant-accuracy': ('quant_sweep.py', True),
    'cpu-int8': ('benchmark_adder.py', True),
    'energy': ('count_ops.py', False),
    'cpu-float32': ('benchmark_adder.py', True),
}


def test_readme_is_a_front_page():
    assert len(README.splitlines()) <= 250
    for marker in ('<!-- main-command -->', '<!-- test-command -->'):
        assert marker in README


def test_measured_tables_are_written_by_tools():
    for name, (tool, machine) in SECTIONS.items():
        body = read_section(README, name)
        assert body, f'README section {name!r} is empty or missing'
        assert f'written by tools/analysis_tools/{tool}' in body, name
        if machine:
            assert 'torch ' in body and 'cores' in body, name
            assert re.search(r'\d{4}-\d\d-\d\d', body), name


def test_links_resolve():
    for doc in ('README.md', 'configs/README.md', 'docs/kernels.md',
                'docs/benchmarks.md', 'csrc/README.md', 'CHANGELOG.md'):
        text = open(osp.join(REPO, doc)).read()
        for target in re.findall(r'\]\(([^)#]+)(?:#[^)]*)?\)', text):
            if '://' in target:
                continue
            path = osp.normpath(osp.join(REPO, osp.dirname(doc), target))
            assert osp.exists(path), f'{doc}: broken link {target}'


def test_files_are_written_whole_or_not_at_all(tmp_path):
    """write_atomic (behind write_section, the benchmark's JSON and
    checkpoints): a write that fails leaves the old file as it was and no
    temporary behind; one that succeeds replaces it."""
    import pytest

    from adder_mm.utils import write_atomic
    from adder_mm.utils.markdown import write_section
    path = tmp_path / 'README.md'
    write_section(path, 'table', 'old')
    before = path.read_text()

    def fail(tmp):
        with open(tmp, 'w') as f:
            f.write('half')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        write_atomic(path, fail)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['README.md']
    write_section(path, 'table', 'new')
    assert read_section(path.read_text(), 'table') == 'new'
