"""BEVFusion-style fusion of camera and LiDAR BEV maps."""
from typing import Optional, Sequence

import torch
from mmcv.cnn import ConvModule
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor


@MODELS.register_module()
class ConvFuser(BaseModule):
    """Concatenate same-grid BEV maps (camera first, then LiDAR) and fuse with
    conv3×3-BN-ReLU, as BEVFusion does.

    Args:
        in_channels: channels of each input map, in the order they are passed.
        out_channels: fused channels.
        norm_cfg: norm layer of the conv.
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: int,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.conv = ConvModule(sum(self.in_channels), out_channels, 3, padding=1,
                               norm_cfg=norm_cfg, act_cfg=dict(type='ReLU'))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """List of (B, C_i, h, w) → (B, out_channels, h, w)."""
        if [f.shape[1] for f in feats] != self.in_channels:
            raise ValueError(f'expected channels {self.in_channels}, '
                             f'got {[f.shape[1] for f in feats]}')
        return self.conv(torch.cat(list(feats), dim=1))
