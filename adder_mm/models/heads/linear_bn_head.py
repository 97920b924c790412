"""The paper's classifier: a linear layer, then BatchNorm on the logits."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmpretrain.models.heads import LinearClsHead
from mmpretrain.registry import MODELS


@MODELS.register_module()
class LinearBNClsHead(LinearClsHead):
    """Linear classifier, then BatchNorm1d over the class logits.

    The paper's models end in a 1x1 conv classifier (no bias on the CIFAR
    ResNets, bias on ResNet-50) followed by BatchNorm on the logits; on
    globally pooled features the 1x1 conv is this linear layer.

    Args:
        num_classes (int): number of classes (> 0).
        in_channels (int): feature channels C of the last stage (> 0).
        bias (bool): bias of the linear layer. Default True.
        init_cfg (dict): as LinearClsHead (Normal std 0.01 on the Linear);
            the BatchNorm starts at weight 1, bias 0.
        **kwargs: loss, topk, cal_acc of ClsHead.

    Shapes: ``feats[-1]`` [N, C] -> logits [N, num_classes]. In training
    mode the BatchNorm needs N > 1.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 bias: bool = True,
                 init_cfg: Optional[dict] = dict(
                     type='Normal', layer='Linear', std=0.01),
                 **kwargs):
        if not isinstance(in_channels, int) or in_channels <= 0:
            raise ValueError(
                f'in_channels={in_channels!r} must be a positive integer')
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            init_cfg=init_cfg,
            **kwargs)
        self.bias = bool(bias)
        if not self.bias:
            self.fc = nn.Linear(in_channels, num_classes, bias=False)
        self.bn = nn.BatchNorm1d(num_classes)

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """[N, C] features of the last stage -> [N, num_classes] logits."""
        pre_logits = self.pre_logits(feats)
        if pre_logits.dim() != 2:
            raise ValueError(
                'LinearBNClsHead expects pooled features [N, C] (add a '
                f'GlobalAveragePooling neck), got shape '
                f'{tuple(pre_logits.shape)}')
        return self.bn(self.fc(pre_logits))
