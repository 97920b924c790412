"""LinearBNClsHead: Linear, then BatchNorm1d on the logits (the paper's)."""
import pytest
import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import adder_mm  # noqa: F401  (registers the head)


def _head(**kw):
    cfg = dict(type='LinearBNClsHead', num_classes=5, in_channels=8)
    cfg.update(kw)
    return MODELS.build(cfg)


@pytest.mark.parametrize('bias', [True, False])
def test_forward_is_linear_then_batchnorm(bias):
    torch.manual_seed(0)
    head = _head(bias=bias)
    head.init_weights()
    assert (head.fc.bias is not None) == bias
    with torch.no_grad():
        head.bn.weight.uniform_(0.5, 2)
        head.bn.bias.uniform_(-1, 1)
    x = torch.randn(6, 8)
    logits = F.linear(x, head.fc.weight, head.fc.bias)
    # Training: normalised with the batch statistics of the logits.
    head.train()
    out = head((torch.randn(6, 3), x))  # only the last stage is used
    mean, var = logits.mean(0), logits.var(0, unbiased=False)
    want = (logits - mean) / torch.sqrt(var + head.bn.eps)
    torch.testing.assert_close(out, want * head.bn.weight + head.bn.bias)
    # Eval: normalised with the running statistics.
    head.eval()
    with torch.no_grad():
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2)
    want = (logits - head.bn.running_mean) / torch.sqrt(
        head.bn.running_var + head.bn.eps)
    torch.testing.assert_close(
        head((x, )), want * head.bn.weight + head.bn.bias)


def test_loss_and_predict():
    head = _head(topk=(1, ))
    head.init_weights()
    x = torch.randn(4, 8)
    samples = [DataSample().set_gt_label(i % 5) for i in range(4)]
    losses = head.loss((x, ), samples)
    assert losses['loss'].ndim == 0 and losses['loss'] > 0
    losses['loss'].backward()
    assert head.fc.weight.grad.abs().sum() > 0
    assert head.bn.weight.grad.abs().sum() > 0
    head.eval()
    preds = head.predict((x, ))
    assert len(preds) == 4 and preds[0].pred_score.shape == (5, )


def test_standard_linear_head_still_available():
    head = MODELS.build(
        dict(type='LinearClsHead', num_classes=5, in_channels=8))
    assert not hasattr(head, 'bn')


def test_bad_inputs():
    with pytest.raises(ValueError, match='num_classes'):
        _head(num_classes=0)
    with pytest.raises(ValueError, match='in_channels'):
        _head(in_channels=0)
    with pytest.raises(ValueError, match='GlobalAveragePooling'):
        _head().eval()((torch.randn(2, 8, 3, 3), ))
