"""DETR-style decoder layer of the map head: queries read the BEV map by deformable sampling."""
from __future__ import annotations

from typing import Optional

from mmcv.cnn.bricks.transformer import FFN
from mmcv.ops import MultiScaleDeformableAttention
from mmengine.model import BaseModule
from torch import Tensor, nn


class MapDecoderLayer(BaseModule):
    """Post-norm layer: self-attention over all point queries, deformable cross-attention
    to the single-level BEV map around each query's reference point, then an FFN.

    mmcv's ``MultiScaleDeformableAttention`` runs its CUDA kernel on GPU tensors and
    ``multi_scale_deformable_attn_pytorch`` on CPU tensors, so no wrapper is needed.
    """

    def __init__(self,
                 embed_dims: int = 256,
                 num_heads: int = 8,
                 num_points: int = 4,
                 ffn_dims: int = 512,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.self_attn_drop = nn.Dropout(dropout)
        self.cross_attn = MultiScaleDeformableAttention(
            embed_dims=embed_dims, num_heads=num_heads, num_levels=1, num_points=num_points,
            dropout=dropout, batch_first=True)
        self.ffn = FFN(embed_dims=embed_dims, feedforward_channels=ffn_dims, ffn_drop=dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(3))

    def forward(self,
                query: Tensor,
                query_pos: Tensor,
                value: Tensor,
                reference_points: Tensor,
                spatial_shapes: Tensor,
                level_start_index: Tensor,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """Update ``query (B, Nq, D)``; ``value (B, H*W, D)``; ``reference_points (B, Nq, 2)``
        normalized (x along the BEV width, y along its height); ``attn_mask (Nq, Nq)`` bool,
        True = may not attend."""
        qk = query + query_pos
        attn = self.self_attn(qk, qk, query, attn_mask=attn_mask, need_weights=False)[0]
        query = self.norms[0](query + self.self_attn_drop(attn))
        query = self.norms[1](self.cross_attn(
            query, value=value, query_pos=query_pos,
            reference_points=reference_points[:, :, None],
            spatial_shapes=spatial_shapes, level_start_index=level_start_index))
        return self.norms[2](self.ffn(query))
