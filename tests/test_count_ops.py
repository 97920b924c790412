"""Operation counter (adder_mm.analysis.op_counter) and its CLI
(tools/analysis_tools/count_ops.py). Forward passes run on meta tensors or
tiny CPU inputs; about 20 s on 2 CPU cores."""
import json
import os.path as osp
import warnings

import pytest
import torch
import torch.nn as nn

from adder_mm.analysis.op_counter import (
    ADDER_JIT_OPS,
    ENERGY_45NM_PJ,
    adder_flop_jit,
    count_ops,
    load_energy_table,
)
from adder_mm.apis.op_count import count_config
from adder_mm.models import AdderConv2d

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ADDER_CFG = osp.join(ROOT, 'configs', 'adder_r20_digits.py')
CNN_CFG = osp.join(ROOT, 'configs', 'cnn_r20_digits.py')


TOOL = osp.join('tools', 'analysis_tools', 'count_ops.py')


class Tiny(nn.Module):
    """conv(bias) -> BN -> adder -> pool -> linear(bias), linear used twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2, bias=True)
        self.bn = nn.BatchNorm2d(3)
        self.adder = AdderConv2d(3, 4, 2, stride=1, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.pool(self.adder(self.bn(self.conv(x)))).flatten(1)
        return self.fc(self.fc(y))


def test_tiny_model_per_layer_counts_by_hand():
    torch.manual_seed(0)
    model = Tiny().eval()
    ops = count_ops(model, torch.randn(2, 2, 4, 4))
    layers = {layer.name: layer for layer in ops.layers}
    assert [layer.name for layer in ops.layers] == ['conv', 'adder', 'fc']

    # conv: [2,2,4,4] -> [2,3,3,3]: 54 outputs, K = 2*2*2 = 8 terms each.
    conv = layers['conv']
    assert conv.output_shape == (2, 3, 3, 3) and conv.terms == 8
    assert conv.counts() == dict(mults=54 * 8, adds=54 * 8 + 54,
                                 bias_adds=54, abs_ops=0)
    # adder: [2,3,3,3] pad 1, k 2 -> [2,4,4,4]: 128 outputs, K = 3*2*2 = 12;
    # one subtraction + one accumulation + one |.| per term, no bias.
    adder = layers['adder']
    assert adder.kind == 'adder' and adder.output_shape == (2, 4, 4, 4)
    assert adder.counts() == dict(mults=0, adds=2 * 128 * 12, bias_adds=0,
                                  abs_ops=128 * 12)
    # fc: called twice on [2,4] -> [2,4]: 2 calls x 8 outputs x K=4, + bias.
    fc = layers['fc']
    assert fc.calls == 2 and fc.outputs == 16
    assert fc.counts() == dict(mults=16 * 4, adds=16 * 4 + 16, bias_adds=16,
                               abs_ops=0)

    tot = ops.totals()
    assert tot['mults'] == 54 * 8 + 16 * 4
    assert tot['adds'] == 54 * 9 + 2 * 128 * 12 + 16 * 5
    assert ops.uncounted == {'BatchNorm2d': 1, 'AdaptiveAvgPool2d': 1}
    # abs is free; every mult and add is charged.
    e = ENERGY_45NM_PJ['int8']
    assert ops.energy_pj('int8') == pytest.approx(
        tot['mults'] * e['mult'] + tot['adds'] * e['add'])
    # hooks are gone: a second count gives the same, not double.
    assert count_ops(model, torch.randn(2, 2, 4, 4)).totals() == tot


@pytest.mark.parametrize('layer', ['adder', 'conv'])
def test_groups_dilation_stride_match_formula_and_mmengine(layer):
    from mmengine.analysis import FlopAnalyzer
    cin, cout, k, groups, dil, stride, pad = 6, 4, 3, 2, 2, 2, 1
    h, w, n = 11, 9, 2
    cls = AdderConv2d if layer == 'adder' else nn.Conv2d
    model = nn.Sequential(cls(cin, cout, k, stride=stride, padding=pad,
                              dilation=dil, groups=groups, bias=False))
    x = torch.randn(n, cin, h, w)
    ops = count_ops(model, x)
    (rec, ) = ops.layers
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    assert rec.output_shape == (n, cout, ho, wo)
    terms = n * cout * ho * wo * (cin // groups) * k * k
    if layer == 'adder':
        assert rec.counts() == dict(mults=0, adds=2 * terms, bias_adds=0,
                                    abs_ops=terms)
    else:
        assert rec.counts() == dict(mults=terms, adds=terms, bias_adds=0,
                                    abs_ops=0)
    # MMEngine's tracer is an independent oracle for the term count.
    fa = FlopAnalyzer(model, (x, ))
    for name in ADDER_JIT_OPS:
        fa.set_op_handle(name, adder_flop_jit)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert fa.total() == terms


def test_mmengine_get_model_complexity_info_counts_adders(monkeypatch):
    from mmengine.analysis import complexity_analysis as ca
    from mmengine.analysis import get_model_complexity_info

    from adder_mm.analysis.op_counter import register_mmengine_flop_handle
    # Restore MMEngine's table after the test.
    for table in ('_DEFAULT_SUPPORTED_FLOP_OPS', '_DEFAULT_SUPPORTED_ACT_OPS'):
        monkeypatch.setattr(ca, table, dict(getattr(ca, table)))
    model = nn.Sequential(AdderConv2d(3, 4, 3, padding=1), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 2, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        before = get_model_complexity_info(model, (3, 5, 5),
                                           show_table=False, show_arch=False)
        register_mmengine_flop_handle()
        after = get_model_complexity_info(model, (3, 5, 5), show_table=False,
                                          show_arch=False)
    adder_terms = 4 * 5 * 5 * 3 * 9
    assert before['flops'] == 100 * 2  # the adder was skipped
    assert after['flops'] == adder_terms + 100 * 2
    # activations: the adder's [1,4,5,5] output joins the linear's [1,2].
    assert before['activations'] == 2
    assert after['activations'] == 100 + 2


def _resnet_cifar(depth, conv_cfg):
    from mmpretrain.registry import MODELS

    import adder_mm  # noqa: F401
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='AdderResNet_CIFAR', depth=depth,
                      conv_cfg=conv_cfg),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearBNClsHead', num_classes=10, in_channels=64,
                  bias=False)))
    model.eval()
    return model


def _cifar_resnet_terms(blocks):
    """Multiply-accumulate terms of He et al.'s CIFAR ResNet at 32x32,
    layer by layer from the architecture: (stem, block convs + shortcuts,
    fc)."""
    stem = 16 * 3 * 9 * 32 * 32
    body = 0
    cin = 16
    for cout, hw in ((16, 32), (32, 16), (64, 8)):
        for b in range(blocks):
            body += cout * cin * 9 * hw * hw  # conv1
            body += cout * cout * 9 * hw * hw  # conv2
            if b == 0 and cin != cout:
                body += cout * cin * hw * hw  # 1x1 shortcut
            cin = cout
    return stem, body, 64 * 10


@pytest.mark.parametrize('depth', [20, 32])
def test_cifar_resnet_totals_adder_vs_cnn(depth):
    from mmengine.analysis import FlopAnalyzer
    blocks = (depth - 2) // 6
    stem, body, fc = _cifar_resnet_terms(blocks)
    res = {}
    for name, conv_cfg in (('adder', dict(type='Adder')), ('cnn', None)):
        model = _resnet_cifar(depth, conv_cfg)
        model.to('meta')
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)
            res[name] = count_ops(
                model, torch.zeros(1, 3, 32, 32, device='meta'),
                forward=lambda x, m=model: m(x, mode='tensor'))
    cnn, adder = res['cnn'].totals(), res['adder'].totals()
    assert cnn == dict(mults=stem + body + fc, adds=stem + body + fc,
                       bias_adds=0, abs_ops=0)
    # stem and classifier stay multiplication-based in the AdderNet.
    assert adder == dict(mults=stem + fc, adds=stem + fc + 2 * body,
                         bias_adds=0, abs_ops=body)
    # The twins do the same number of ops in total; the adder only trades
    # multiplications for additions.
    assert adder['mults'] + adder['adds'] == 2 * cnn['mults']
    kinds = res['adder'].totals_by_kind()
    assert kinds['adder']['adds'] == 2 * body
    n_adder = sum(layer.kind == 'adder' for layer in res['adder'].layers)
    assert n_adder == 6 * blocks + 2  # block convs + two 1x1 shortcuts
    # cross-check the CNN against MMEngine's tracer on a real CPU forward.
    model = _resnet_cifar(depth, None)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fa = FlopAnalyzer(model.backbone, (torch.zeros(1, 3, 32, 32), ))
        fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        # (set_op_handle('aten::batch_norm', None) does not drop BN in
        # mmengine 0.10.7, so read the conv entry.)
        assert fa.by_operator()['conv'] == stem + body
    if depth == 32:
        # The paper's 69.12M for ResNet-32 is all conv layers + fc.
        assert round(cnn['mults'] / 1e6, 2) == 69.12


def test_energy_table_validation(tmp_path):
    custom = tmp_path / 'e.json'
    custom.write_text(json.dumps({'fp8': {'add': 0.02, 'mult': 0.1}}))
    table = load_energy_table(str(custom))
    assert table['fp8'] == {'add': 0.02, 'mult': 0.1}
    assert table['fp32'] == ENERGY_45NM_PJ['fp32']
    for bad, msg in (({'fp32': {'add': 1}}, 'exactly the keys'),
                     ({'fp32': {'add': -1, 'mult': 1}}, 'non-negative'),
                     ([1, 2], 'must map')):
        with pytest.raises(ValueError, match=msg):
            load_energy_table(bad)
    broken = tmp_path / 'broken.json'
    broken.write_text('{not json')
    with pytest.raises(ValueError, match='cannot read JSON'):
        load_energy_table(str(broken))
    ops = count_ops(nn.Linear(3, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="unknown bits 'int4'"):
        ops.energy_pj('int4')
    with pytest.raises(TypeError, match='must be an nn.Module'):
        count_ops(lambda x: x, torch.zeros(1))


def test_cli_compare_json_plot_and_meta_equals_cpu(tmp_path, run_tool):
    out, png = tmp_path / 'ops.json', tmp_path / 'ops.png'
    md = tmp_path / 'energy.md'
    proc = run_tool([TOOL, ADDER_CFG, '--compare', CNN_CFG, '--bits', 'fp16',
                     '--out', str(out), '--plot', str(png),
                     '--markdown', str(md)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert 'TOTAL' in text and 'not counted' in text and 'saving' in text
    doc = json.loads(out.read_text())
    adder, cnn = doc['models']
    assert adder['input_shape'] == cnn['input_shape'] == [1, 3, 32, 32]
    assert adder['totals']['mults'] < cnn['totals']['mults']
    assert (adder['totals']['mults'] + adder['totals']['adds'] ==
            cnn['totals']['mults'] + cnn['totals']['adds'])
    e = ENERGY_45NM_PJ['fp16']
    for m in (adder, cnn):
        t = m['totals']
        assert t['energy_pj'] == pytest.approx(t['mults'] * e['mult'] +
                                               t['adds'] * e['add'])
        assert sum(layer['adds'] for layer in m['layers']) == t['adds']
        assert sum(g['mults'] for g in m['groups'].values()) == t['mults']
    cmp = doc['comparison']
    assert cmp['energy_saving'] == pytest.approx(
        1 - adder['totals']['energy_pj'] / cnn['totals']['energy_pj'])
    assert 0 < cmp['energy_saving'] < 1
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # The markdown table: each model's saving against the last (the
    # reference row says so instead of "1.00x less").
    rows = [line.split('|')[1:-1] for line in md.read_text().splitlines()
            if line.startswith('| ') and '.py' in line]
    assert [r[0].strip() for r in rows][-2:] == ['adder_r20_digits.py',
                                                 'cnn_r20_digits.py']
    ratio = cnn['totals']['energy_pj'] / adder['totals']['energy_pj']
    assert rows[-2][4].strip() == f'{ratio:.2f}x less'
    assert rows[-1][4].strip() == 'reference'

    # The default meta-tensor pass counts what a real CPU pass counts.
    meta = count_config(ADDER_CFG, (8, 8), device='meta')
    cpu = count_config(ADDER_CFG, (8, 8), device='cpu')
    assert meta['device'] == 'meta' and cpu['device'] == 'cpu'
    assert ([layer.to_dict() for layer in meta['ops'].layers] ==
            [layer.to_dict() for layer in cpu['ops'].layers])


def test_cli_rejects_bad_arguments(tmp_path, run_tool):
    for argv, message in (
            ([ADDER_CFG, '--bits', 'int4'], 'not in the energy table'),
            ([ADDER_CFG, '--shape', '1', '2', '3'], '--shape takes H W'),
            ([str(tmp_path / 'missing.py')], 'no such file'),
            ([ADDER_CFG, '--compare', str(tmp_path / 'nope.py')],
             'no such file')):
        proc = run_tool([TOOL] + argv)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    res = count_config(ADDER_CFG, (16, 16),
                       cfg_options={'model.backbone.depth': 32})
    n_adder = sum(layer.kind == 'adder' for layer in res['ops'].layers)
    assert n_adder == 6 * 5 + 2


def test_zero_energy_comparison_reads_n_a(tmp_path, run_tool):
    """An --energy table may price ops at 0 pJ (valid: e.g. free
    additions); --compare then has no saving or ratio. It printed a
    TypeError traceback after the counting; now n/a, null in --out."""
    zero = tmp_path / 'zero.json'
    zero.write_text(json.dumps({'fp32': {'add': 0, 'mult': 0}}))
    out = tmp_path / 'ops.json'
    proc = run_tool([TOOL, ADDER_CFG, '--compare', CNN_CFG, '--energy', zero,
                     '--no-per-layer', '--out', out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'saving n/a (ratio n/a' in proc.stdout
    cmp = json.loads(out.read_text())['comparison']
    assert cmp['energy_saving'] is None and cmp['energy_ratio'] is None
    assert cmp['mults'] < cmp['mults_other']

    # One side without energy: free additions make a bias-free adder layer
    # cost nothing against a convolution.
    from adder_mm.apis.op_count import compare, comparison_text
    table = load_energy_table({'fp32': {'add': 0, 'mult': 1}})
    x = torch.zeros(1, 2, 4, 4)
    adder, conv = ({'config': name, 'ops': count_ops(layer, x)} for name,
                   layer in (('adder', AdderConv2d(2, 3, 3, bias=False)),
                             ('conv', nn.Conv2d(2, 3, 3, bias=False))))
    summary = compare(adder, conv, 'fp32', table)
    assert summary['energy_saving'] == 1 and summary['energy_ratio'] is None
    assert 'energy 0.00 pJ vs 216.00 pJ: saving 100.0% (ratio n/a' in \
        comparison_text(summary)
