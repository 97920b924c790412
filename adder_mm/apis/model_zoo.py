"""The model zoo (configs/metafile.yml and the table of configs/README.md),
kept in step with the configs: parameters and operation counts are
computed from the models, never typed."""
import json
import math
import os.path as osp
import re

import yaml

from adder_mm.utils.markdown import replace_section

from .errors import ToolError
from .op_count import count_config, fmt, load_model

SECTION = 'model-zoo'
HEADER = (
    '# Results: the paper\'s top-1 (top-5), AdderNet and its CNN twin; the\n'
    '# digits recipe is ours (README.md, Results). Metadata (parameters,\n'
    '# multiplications, additions of one forward pass at the config\'s input\n'
    '# size) is written by tools/analysis_tools/model_zoo.py.\n')


def _read(path, what):
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f'{what} {path!r} cannot be read: {e}') from None


def load_metafile(path):
    """(the text before the generated part, the parsed metafile). The
    generated part starts at the ``# Results:`` comment the tool writes,
    or, in a metafile it has not written yet, at the line ``Models:``.
    A file that cannot be read, is not YAML or has no list ``Models`` is
    a ToolError (see check_models for the models)."""
    text = _read(path, 'metafile')
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        what, mark = getattr(e, 'problem', None), getattr(
            e, 'problem_mark', None)
        if what and mark:
            what += f' (line {mark.line + 1}, column {mark.column + 1})'
        raise ToolError(f'metafile {path!r} is not valid YAML: '
                        f'{what or e}') from None
    models = doc.get('Models') if isinstance(doc, dict) else None
    if not isinstance(models, list) or not models:
        if isinstance(doc, dict):
            got = f'`Models: {models!r}`' if 'Models' in doc else \
                'no `Models`'
        else:
            got = 'an empty file' if doc is None else \
                f'a {type(doc).__name__}'
        raise ToolError(f'metafile {path!r}: expected a mapping with a '
                        'non-empty list `Models` (mmpretrain\'s format), got '
                        + got)
    if '# Results:' in text:
        head = text.split('# Results:')[0]
    else:
        start = re.search(r'^Models:', text, re.M)
        if start is None:
            raise ToolError(f'metafile {path!r}: no line `Models:` (a '
                            'block mapping key at the start of a line) '
                            'where the generated part can start')
        head = text[:start.start()]
    return head, doc


def check_models(doc, path, root):
    """The models of a metafile (load_metafile), each a mapping with a
    unique ``Name``, a ``Config`` that exists under ``root``, and
    ``Metadata`` and ``Results`` (a list of mappings with ``Metrics``) of
    the right shape; else a ToolError naming the model and the entry."""
    where = f'metafile {path!r}'
    models = doc['Models']
    names = set()
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            raise ToolError(f'{where}: Models[{i}] is {m!r}, not a mapping '
                            'with Name and Config')
        model = f'{where}: Models[{i}]'
        for key in ('Name', 'Config'):
            if not isinstance(m.get(key), str) or not m[key].strip():
                raise ToolError(f'{model} needs `{key}` (a string), got '
                                f'{m.get(key)!r}')
        model = f'{where}: model {m["Name"]!r}'
        if m['Name'] in names:
            raise ToolError(f'{model} is listed twice')
        names.add(m['Name'])
        if not osp.isfile(osp.join(root, m['Config'])):
            raise ToolError(f'{model}: Config {m["Config"]!r} is not a file '
                            f'(under {root!r})')
        if not isinstance(m.get('Metadata') or {}, dict):
            raise ToolError(f'{model}: Metadata must be a mapping, got '
                            f'{m["Metadata"]!r}')
        results = m.get('Results') or []
        if not isinstance(results, list) or not all(
                isinstance(r, dict) and isinstance(r.get('Metrics'), dict)
                for r in results):
            raise ToolError(f'{model}: Results must be a list of mappings '
                            f'with Metrics (a mapping), got {results!r}')
    return models


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
    """{config basename: 'mean +- std (n seeds)'} from seeds.py --out
    (``None``: no file, no measured column). A missing or unreadable file,
    or one without ``{"results": {config: [{"value": number}, ...]}}``, is
    a ToolError."""
    if results_json is None:
        return {}
    where = f'results file {results_json!r}'
    if not osp.isfile(results_json):
        raise ToolError(f'{where}: no such file (tools/analysis_tools/'
                        'seeds.py --out writes it)')
    try:
        doc = json.loads(_read(results_json, 'results file'))
    except ValueError as e:
        raise ToolError(f'{where} is not JSON: {e}') from None
    results = doc.get('results') if isinstance(doc, dict) else None
    if not isinstance(results, dict):
        if not isinstance(doc, dict):
            got = f'a {type(doc).__name__}'
        elif 'results' in doc:
            got = f'"results" of type {type(results).__name__}'
        else:
            got = 'no "results"'
        raise ToolError(f'{where}: expected {{"results": {{config: [{{'
                        f'"value": number}}, ...]}}}} (seeds.py --out), got '
                        + got)
    out = {}
    for config, rows in results.items():
        if not isinstance(rows, list) or not rows or not all(
                isinstance(r, dict) and _is_number(r.get('value'))
                for r in rows):
            raise ToolError(f'{where}: results[{config!r}] must be a '
                            'non-empty list of {"value": number, ...} '
                            f'(one per seed), got {rows!r}'[:400])
        vals = [r['value'] for r in rows]
        mean = sum(vals) / len(vals)
        std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** .5 \
            if len(vals) > 1 else 0.
        out[osp.basename(config)] = f'{mean:.2f} +- {std:.2f} ({len(vals)})'
    return out


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and \
        math.isfinite(v)


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
    """(metafile text, README table) regenerated from the configs. The
    metafile and results file are checked before any model is counted."""
    head, doc = load_metafile(metafile)
    models = check_models(doc, metafile, root)
    ours = measured(results_json)
    for m in models:
        # Hand-kept keys (Training Data) stay; the counts are recomputed.
        m['Metadata'] = {**(m.get('Metadata') or {}),
                         **model_metadata(m['Config'], root)}
    text = head + HEADER + yaml.safe_dump({'Models': models},
                                          sort_keys=False, width=79)
    return text, table(models, ours)


def regenerate(metafile, readme, root, results_json=None):
    """{path: new text} of the metafile and README whose text the configs
    change (nothing written). The README's model-zoo section is checked
    before the counting."""
    readme_text = _read(readme, 'README')
    try:
        replace_section(readme_text, SECTION, '')
    except ValueError as e:
        raise ToolError(f'README {readme!r}: {e}') from None
    meta, block = render(metafile, root, results_json)
    new = {metafile: meta,
           readme: replace_section(readme_text, SECTION, block)}
    old = {metafile: _read(metafile, 'metafile'), readme: readme_text}
    return {path: text for path, text in new.items() if old[path] != text}
