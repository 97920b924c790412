"""configs/metafile.yml and configs/README.md list every config, each one
builds, and their counts are those of the models now (model_zoo.py
--check recounts them)."""
import glob
import json
import os.path as osp
import subprocess
import sys

import pytest
import yaml

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_metafile_lists_every_config_in_mmpretrain_format():
    with open(osp.join(REPO, 'configs', 'metafile.yml')) as f:
        doc = yaml.safe_load(f)
    collection, = doc['Collections']
    assert collection['Paper']['URL'].startswith('https://arxiv.org/')
    listed = {m['Config'] for m in doc['Models']}
    present = {osp.relpath(p, REPO) for p in
               glob.glob(osp.join(REPO, 'configs', '*.py'))}
    assert listed == present
    for m in doc['Models']:
        assert m['In Collection'] == collection['Name']
        assert {'Training Data', 'Parameters', 'Multiplications',
                'Additions'} <= set(m['Metadata'])
        for res in m['Results'] or []:
            assert res['Task'] == 'Image Classification'
            assert 0 < res['Metrics']['Top 1 Accuracy'] < 100
    readme = open(osp.join(REPO, 'configs', 'README.md')).read()
    for config in listed:
        assert f'({osp.basename(config)})' in readme, config


def test_model_zoo_is_up_to_date_and_every_config_builds():
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'analysis_tools',
                                  'model_zoo.py'), '--check'],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert 'up to date' in proc.stdout


# --- bad input: a message naming the problem, before anything is counted --

GOOD_MODEL = dict(Name='m', Config='configs/adder_r20_digits.py',
                  Metadata={'Training Data': 'digits'}, Results=None)


@pytest.fixture
def no_counting(monkeypatch):
    """The checks come first: counting a model fails the test."""
    from adder_mm.apis import model_zoo

    def counted(*args):
        raise AssertionError('a model was counted before the checks')
    monkeypatch.setattr(model_zoo, 'model_metadata', counted)


@pytest.mark.parametrize('text, message', [
    ('Models: [\n  - : :\n', r'is not valid YAML: .*\(line 2, column 3\)'),
    ('', 'non-empty list `Models`.*got an empty file'),
    ('- a\n- b\n', 'non-empty list `Models`.*got a list'),
    ('Collections: []\n', 'got no `Models`'),
    ('Models:\n', 'got `Models: None`'),
    ('Models:\n  a: 1\n', "got `Models: {'a': 1}`"),
    ('Models:\n- abc\n', r"Models\[0\] is 'abc', not a mapping"),
    ('Models:\n- Config: configs/adder_r20_digits.py\n',
     r'Models\[0\] needs `Name` \(a string\), got None'),
    ('Models:\n- Name: m\n', r'Models\[0\] needs `Config`'),
    ('Models:\n- Name: m\n  Config: 3\n', r'needs `Config` \(a string\), '
     'got 3'),
    ('Models:\n- Name: m\n  Config: configs/missing.py\n',
     "model 'm': Config 'configs/missing.py' is not a file"),
    (yaml.safe_dump({'Models': [GOOD_MODEL, GOOD_MODEL]}),
     "model 'm' is listed twice"),
    (yaml.safe_dump({'Models': [dict(GOOD_MODEL, Metadata='x')]}),
     'Metadata must be a mapping'),
    (yaml.safe_dump({'Models': [dict(GOOD_MODEL, Results='x')]}),
     'Results must be a list of mappings with Metrics'),
    (yaml.safe_dump({'Models': [dict(GOOD_MODEL, Results=[{'Task': 'x'}])]}),
     'Results must be a list of mappings with Metrics'),
    (yaml.safe_dump({'Models': [dict(GOOD_MODEL,
                                     Results=[{'Metrics': 'x'}])]}),
     'Results must be a list of mappings with Metrics'),
    ('{"Models": [{"Name": "m", "Config": "configs/adder_r20_digits.py"}]}',
     'no line `Models:`'),
])
def test_malformed_metafile_is_named(text, message, tmp_path, no_counting):
    """Each of these gave a traceback (TypeError, KeyError, AttributeError,
    yaml's ScannerError) or, the last, a metafile with its models twice."""
    from adder_mm.apis import ToolError
    from adder_mm.apis.model_zoo import render
    meta = tmp_path / 'metafile.yml'
    meta.write_text(text)
    with pytest.raises(ToolError, match=message):
        render(str(meta), REPO)


@pytest.mark.parametrize('doc, message', [
    (None, 'no such file'),
    ('{nope', 'is not JSON'),
    (b'\xff\xfe', 'cannot be read'),
    ([1, 2], r'expected \{"results": .*got a list'),
    ({'x': 1}, 'got no "results"'),
    ({'results': [1]}, 'got "results" of type list'),
    ({'results': {'c.py': []}}, r"results\['c.py'\] must be a non-empty "
     'list'),
    ({'results': {'c.py': 5}}, 'non-empty list'),
    ({'results': {'c.py': [5]}}, 'non-empty list'),
    ({'results': {'c.py': [{'seed': 1}]}}, 'non-empty list'),
    ({'results': {'c.py': [{'value': 'x'}]}}, 'non-empty list'),
    ({'results': {'c.py': [{'value': True}]}}, 'non-empty list'),
])
def test_malformed_results_file_is_named(doc, message, tmp_path,
                                         no_counting):
    """A missing results file was silently skipped; an empty list of seeds
    divided by zero; the rest were tracebacks."""
    from adder_mm.apis import ToolError
    from adder_mm.apis.model_zoo import render
    results = tmp_path / 'results.json'
    if isinstance(doc, bytes):
        results.write_bytes(doc)
    elif isinstance(doc, str):
        results.write_text(doc)
    elif doc is not None:
        results.write_text(json.dumps(doc))
    meta = tmp_path / 'metafile.yml'
    meta.write_text(yaml.safe_dump({'Models': [GOOD_MODEL]}))
    with pytest.raises(ToolError, match=message):
        render(str(meta), REPO, str(results))


def test_model_zoo_tool_reports_bad_input_without_traceback(tmp_path,
                                                            run_tool):
    tool = osp.join('tools', 'analysis_tools', 'model_zoo.py')
    meta = tmp_path / 'metafile.yml'
    meta.write_text('Models: [\n')
    readme = tmp_path / 'README.md'
    readme.write_text('<!-- model-zoo:begin -->\n')
    for args, message in (
            (['--metafile', meta], 'metafile.yml\' is not valid YAML'),
            (['--metafile', meta, '--check'], 'is not valid YAML'),
            (['--readme', readme], "--readme section 'model-zoo': one "
             'marker without the other'),
            (['--readme', readme, '--check'], 'one marker without the other'),
            (['--results', tmp_path / 'none.json'], 'no such file'),
            (['--readme', tmp_path / 'no.md'], "--readme: no such file")):
        proc = run_tool([tool] + args)
        assert proc.returncode == 2, (args, proc.stderr[-3000:])
        assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
        assert 'model_zoo.py: error: ' in proc.stderr, proc.stderr
        assert message in proc.stderr, (message, proc.stderr)
    # Nothing written.
    assert meta.read_text() == 'Models: [\n'
    assert readme.read_text() == '<!-- model-zoo:begin -->\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['README.md',
                                                          'metafile.yml']


def test_models_are_known_to_mmpretrain_by_name(run_python, tmp_path):
    """``import adder_mm`` registers the metafile's models with MMPretrain:
    get_model by name builds the config's model and loads a checkpoint."""
    ckpt = tmp_path / 'w.pth'
    metafile = osp.join(REPO, 'configs', 'metafile.yml')
    run_python([
        'import torch, yaml',
        'import adder_mm',
        'from mmpretrain import get_model, list_models',
        f'doc = yaml.safe_load(open({metafile!r}))',
        'names = {m["Name"] for m in doc["Models"]}',
        'assert names <= set(list_models()), names - set(list_models())',
        'model = get_model("adder_r20_digits")',
        'assert type(model.backbone).__name__ == "AdderResNet_CIFAR"',
        'w = model.backbone.layer1[0].conv1.weight',
        f'torch.save(dict(state_dict=model.state_dict()), {str(ckpt)!r})',
        f'again = get_model("adder_r20_digits", pretrained={str(ckpt)!r})',
        'assert torch.equal(again.backbone.layer1[0].conv1.weight, w)',
        'print("ok")'])
