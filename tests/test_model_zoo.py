"""configs/metafile.yml and configs/README.md list every config, each one
builds, and their counts are those of the models now (model_zoo.py
--check recounts them)."""
import glob
import os.path as osp
import subprocess
import sys

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
