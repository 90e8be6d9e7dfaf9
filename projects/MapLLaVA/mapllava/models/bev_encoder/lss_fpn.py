"""A light FPN that merges backbone levels into the single map the LSS transform lifts."""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn


@MODELS.register_module()
class LSSFPN(BaseModule):
    """Project each selected level to ``out_channels`` (1×1), upsample all to the first
    (finest) one, concatenate and fuse with a 3×3 conv.

    The view transform consumes one stride (8 or 16), so the coarse semantic levels are
    merged into it instead of producing a pyramid (cf. BEVFusion's GeneralizedLSSFPN).

    Args:
        in_channels: channels of the selected input levels, finest first.
        out_channels: channels of the output map.
        in_indices: which backbone outputs to use (default: all, in order).
        norm_cfg: norm layer of the convs.
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: int,
                 in_indices: Optional[Sequence[int]] = None,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_indices = list(in_indices) if in_indices is not None else None
        if self.in_indices is not None and len(self.in_indices) != len(in_channels):
            raise ValueError('in_indices and in_channels must have the same length')
        self.out_channels = out_channels
        self.laterals = nn.ModuleList(
            ConvModule(c, out_channels, 1, norm_cfg=norm_cfg) for c in in_channels)
        self.fuse = ConvModule(out_channels * len(in_channels), out_channels, 3, padding=1,
                               norm_cfg=norm_cfg)

    def forward(self, feats: Sequence[Tensor]) -> Tuple[Tensor]:
        """Multi-level features → a 1-tuple with the fused map at the finest stride."""
        if self.in_indices is not None:
            feats = [feats[i] for i in self.in_indices]
        if len(feats) != len(self.laterals):
            raise ValueError(f'expected {len(self.laterals)} levels, got {len(feats)}')
        size = feats[0].shape[-2:]
        outs = []
        for lateral, feat in zip(self.laterals, feats):
            x = lateral(feat)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
            outs.append(x)
        return (self.fuse(torch.cat(outs, dim=1)),)
