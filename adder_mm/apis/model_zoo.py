"""The model zoo (configs/metafile.yml and the table of configs/README.md),
kept in step with the configs: parameters and operation counts are
computed from the models, never typed."""
import json
import os.path as osp

import yaml

from .op_count import count_config, fmt, load_model

SECTION = 'model-zoo'
HEADER = (
    '# Results: the paper\'s top-1 (top-5), AdderNet and its CNN twin; the\n'
    '# digits recipe is ours (README.md, Results). Metadata (parameters,\n'
    '# multiplications, additions of one forward pass at the config\'s input\n'
    '# size) is written by tools/analysis_tools/model_zoo.py.\n')


def load_metafile(path):
    with open(path) as f:
        text = f.read()
    return text.split('# Results:')[0], yaml.safe_load(text)


def model_metadata(config, root):
    """Parameters and counts of one forward pass of ``config``."""
    res = count_config(osp.join(root, config), device='meta')
    totals = res['ops'].totals()
    model, _ = load_model(osp.join(root, config))
    return {
        'Parameters': sum(p.numel() for p in model.parameters()),
        'Multiplications': totals['mults'],
        'Additions': totals['adds'],
        'Input': 'x'.join(map(str, res['input_shape'][1:])),
    }


def measured(results_json):
    """{config basename: 'mean +- std (n seeds)'} from seeds.py --out."""
    if not results_json or not osp.isfile(results_json):
        return {}
    with open(results_json) as f:
        doc = json.load(f)
    out = {}
    for config, rows in doc['results'].items():
        vals = [r['value'] for r in rows]
        mean = sum(vals) / len(vals)
        std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** .5 \
            if len(vals) > 1 else 0.
        out[osp.basename(config)] = f'{mean:.2f} +- {std:.2f} ({len(vals)})'
    return out


def table(models, ours):
    lines = ['| config | dataset | input | params | mults | adds | '
             'paper top-1 | ours top-1 (seeds) |',
             '|---|---|---|---|---|---|---|---|']
    for m in models:
        md, res = m['Metadata'], m.get('Results') or []
        metrics = res[0]['Metrics'] if res else {}
        dataset = md.get('Training Data', '-')
        paper = metrics.get('Top 1 Accuracy')
        top5 = metrics.get('Top 5 Accuracy')
        paper = '-' if paper is None else (
            f'{paper}' + (f' ({top5})' if top5 else ''))
        cfg = osp.basename(m['Config'])
        lines.append(
            f'| [{cfg}]({cfg}) | {dataset} | {md["Input"]} | '
            f'{fmt(md["Parameters"])} | {fmt(md["Multiplications"])} | '
            f'{fmt(md["Additions"])} | {paper} | {ours.get(cfg, "-")} |')
    return '\n'.join(lines)


def render(metafile, root, results_json=None):
    """(metafile text, README table) regenerated from the configs."""
    head, doc = load_metafile(metafile)
    for m in doc['Models']:
        # Hand-kept keys (Training Data) stay; the counts are recomputed.
        m['Metadata'] = {**(m.get('Metadata') or {}),
                         **model_metadata(m['Config'], root)}
    text = head + HEADER + yaml.safe_dump({'Models': doc['Models']},
                                          sort_keys=False, width=79)
    return text, table(doc['Models'], measured(results_json))
