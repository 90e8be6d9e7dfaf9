"""DETR-style decoder layer of the map head: queries read the BEV map by deformable sampling."""
from __future__ import annotations

from typing import Optional

from mmcv.cnn.bricks.transformer import FFN
from mmengine.model import BaseModule
from torch import Tensor, nn

from .fp32_deformable_attention import FP32MultiScaleDeformableAttention


class MapDecoderLayer(BaseModule):
    """Post-norm layer: self-attention among the point queries, deformable cross-attention
    to the single-level BEV map around each query's reference point, then an FFN.

    ``self_attn='full'`` attends over all ``num_vec * num_pts`` queries (MapTR);
    ``'decoupled'`` (MapTRv2) attends across instances for each point index, then across
    the points of each instance -- the same reach at a fraction of the cost.
    mmcv's ``MultiScaleDeformableAttention`` runs its CUDA kernel on GPU tensors and
    ``multi_scale_deformable_attn_pytorch`` on CPU tensors; the cross-attention is its fp32
    subclass because that kernel has no bf16 dispatch.
    """

    def __init__(self,
                 embed_dims: int = 256,
                 num_heads: int = 8,
                 num_points: int = 4,
                 ffn_dims: int = 512,
                 dropout: float = 0.1,
                 num_pts: int = 20,
                 self_attn: str = 'full') -> None:
        super().__init__()
        if self_attn not in ('full', 'decoupled'):
            raise ValueError(f"self_attn must be 'full' or 'decoupled', got {self_attn!r}")
        self.num_pts = num_pts
        self.decoupled = self_attn == 'decoupled'
        self.self_attn = nn.MultiheadAttention(
            embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.intra_attn = nn.MultiheadAttention(
            embed_dims, num_heads, dropout=dropout, batch_first=True) if self.decoupled else None
        self.attn_drop = nn.Dropout(dropout)
        self.cross_attn = FP32MultiScaleDeformableAttention(
            embed_dims=embed_dims, num_heads=num_heads, num_levels=1, num_points=num_points,
            dropout=dropout, batch_first=True)
        self.ffn = FFN(embed_dims=embed_dims, feedforward_channels=ffn_dims, ffn_drop=dropout)
        self.norms = nn.ModuleList(
            nn.LayerNorm(embed_dims) for _ in range(4 if self.decoupled else 3))

    def _attend(self, attn: nn.MultiheadAttention, norm: nn.Module, query: Tensor,
                pos: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        qk = query + pos
        out = attn(qk, qk, query, attn_mask=mask, need_weights=False)[0]
        return norm(query + self.attn_drop(out))

    def _self_attention(self, query: Tensor, query_pos: Tensor,
                        group_mask: Optional[Tensor]) -> Tensor:
        if not self.decoupled:
            mask = None
            if group_mask is not None:
                mask = group_mask.repeat_interleave(self.num_pts, 0).repeat_interleave(
                    self.num_pts, 1)
            return self._attend(self.self_attn, self.norms[0], query, query_pos, mask)
        batch, num_query, dims = query.shape
        num_pts = self.num_pts
        num_inst = num_query // num_pts

        def by_point(x: Tensor) -> Tensor:  # (B, V*P, D) -> (B*P, V, D)
            return x.view(batch, num_inst, num_pts, dims).transpose(1, 2).flatten(0, 1)

        query = self._attend(self.self_attn, self.norms[0], by_point(query),
                             by_point(query_pos), group_mask)
        query = query.view(batch, num_pts, num_inst, dims).transpose(1, 2)
        query = self._attend(self.intra_attn, self.norms[3], query.flatten(0, 1),
                             query_pos.reshape(batch * num_inst, num_pts, dims))
        return query.reshape(batch, num_query, dims)

    def forward(self,
                query: Tensor,
                query_pos: Tensor,
                value: Tensor,
                reference_points: Tensor,
                spatial_shapes: Tensor,
                level_start_index: Tensor,
                group_mask: Optional[Tensor] = None) -> Tensor:
        """Update ``query (B, V*P, D)`` (instance-major); ``value (B, H*W, D)``;
        ``reference_points (B, V*P, 2)`` normalized (x along the BEV width, y along its
        height); ``group_mask (V, V)`` bool, True = instance may not attend to instance."""
        query = self._self_attention(query, query_pos, group_mask)
        query = self.norms[1](self.cross_attn(
            query, value=value, query_pos=query_pos,
            reference_points=reference_points[:, :, None],
            spatial_shapes=spatial_shapes, level_start_index=level_start_index))
        return self.norms[2](self.ffn(query))
