"""MapTR-style vector map head fed by instance queries that come out of the LLM bridge."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.models.layers import MLP, inverse_sigmoid
from mmdet.utils import reduce_mean
from mmdet3d.registry import MODELS, TASK_UTILS
from mmengine.model import BaseModule, bias_init_with_prob
from mmengine.structures import InstanceData
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..task_modules import solve_assignments
from .map_decoder import MapDecoderLayer


def normalize_pts(pts: Tensor, pc_range: Tensor) -> Tensor:
    """Metres in the LiDAR frame -> [0, 1] over the ROI ``(xmin, ymin, xmax, ymax)``."""
    return (pts - pc_range[:2]) / (pc_range[2:] - pc_range[:2])


def denormalize_pts(pts: Tensor, pc_range: Tensor) -> Tensor:
    """Inverse of :func:`normalize_pts`."""
    return pts * (pc_range[2:] - pc_range[:2]) + pc_range[:2]


@torch.compiler.disable
def _matched_indices(costs: list[Tensor], plans: list[list[tuple[int, int, int]]],
                     dims: list[tuple[int, int]], gt_counts: list[list[int]],
                     device: torch.device) -> tuple[Tensor, list[int]]:
    """Hungarian matching on the host (one copy of every cost matrix there), and one copy of
    the matched indices back: ``(5, K)`` rows ``layer, sample, query, GT (flat over the
    batch), order (flat over the samples' (layer · query, GT) order tables)``, positives
    layer-major with queries ascending, and K per group. Runs outside compiled graphs.

    ``plans`` per group: ``(sample, index of its first matrix in costs, num GT)`` for every
    sample with GT; its matrices are one per layer. ``dims`` per group: (layers, queries).
    """
    matches = solve_assignments(costs)
    index_rows, sizes = [], []
    for plan, (num_layers, num_q), counts in zip(plans, dims, gt_counts):
        gt_start = np.cumsum([0] + counts)
        order_start = np.cumsum([0] + [num_layers * num_q * n if num_q else 0 for n in counts])
        rows = []
        for layer in range(num_layers):
            for b, first_cost, num_gt in plan:
                q_idx, g_idx = matches[first_cost + layer]
                keep = np.argsort(q_idx, kind='stable')
                q_idx, g_idx = q_idx[keep], g_idx[keep]
                rows.append(np.stack([
                    np.full_like(q_idx, layer), np.full_like(q_idx, b), q_idx,
                    gt_start[b] + g_idx,
                    order_start[b] + (layer * num_q + q_idx) * num_gt + g_idx]))
        rows = np.concatenate(rows, 1) if rows else np.zeros((5, 0), np.int64)
        index_rows.append(rows.astype(np.int64))
        sizes.append(rows.shape[1])
    index = torch.from_numpy(np.concatenate(index_rows, 1))
    if device.type == 'cuda':
        return index.pin_memory().to(device, non_blocking=True), sizes
    return index.to(device), sizes


@MODELS.register_module()
class MapTRHead(BaseModule):
    """Hierarchical-query decoder (instance query + point query) over the BEV map.

    Each of the ``num_vec`` instance queries given by the bridge is expanded into ``num_pts``
    point queries. Every decoder layer refines the normalized point positions (the reference
    points of the deformable cross-attention) and predicts per-instance class logits, so all
    layers are supervised. Coordinates are normalized over ``pc_range``: x over the BEV width,
    y over its height, row 0 at ``ymin`` -- the BEV encoder's grid convention.

    Args:
        num_classes: number of map classes.
        in_channels: channels of the BEV map.
        embed_dims: width of the queries (the bridge's output width).
        num_vec: instance queries per sample (as many as the bridge emits).
        num_pts: points per polyline.
        num_layers: decoder layers.
        num_heads: attention heads.
        num_points: deformable sampling points per head.
        ffn_dims: hidden width of the FFN.
        dropout: dropout in the decoder.
        self_attn: ``'full'`` self-attention over all point queries (MapTR) or
            ``'decoupled'`` (MapTRv2: across instances, then within each instance; cheaper).
        pc_range: ROI ``(xmin, ymin, xmax, ymax)`` in metres; a 6-value
            ``(xmin, ymin, zmin, xmax, ymax, zmax)`` range (the BEV encoder's) is accepted too.
        num_aux_vec: extra learnable instance queries of the one-to-many group (MapTRv2);
            0 disables it. Used only in training; masked from the main group in self-attention.
        aux_repeat_k: times the GT is repeated for the one-to-many group.
        aux_loss_weight: weight of the one-to-many losses.
        max_per_img: top-k kept by :meth:`predict_by_feat`.
        assigner: one-to-one assigner config.
        loss_cls: classification loss config (sigmoid focal loss).
        loss_pts: point regression loss config on normalized coordinates.
        loss_dir_weight: weight of the ``1 - cos`` loss between consecutive point differences.
        with_cp: recompute each decoder layer in backward (non-reentrant activation
            checkpointing; training only).
    """

    def __init__(self,
                 num_classes: int = 3,
                 in_channels: int = 256,
                 embed_dims: int = 256,
                 num_vec: int = 50,
                 num_pts: int = 20,
                 num_layers: int = 6,
                 num_heads: int = 8,
                 num_points: int = 4,
                 ffn_dims: int = 512,
                 dropout: float = 0.1,
                 self_attn: str = 'full',
                 pc_range: Sequence[float] = (-15.0, -30.0, 15.0, 30.0),
                 num_aux_vec: int = 0,
                 aux_repeat_k: int = 6,
                 aux_loss_weight: float = 1.0,
                 max_per_img: int = 50,
                 assigner: dict = dict(
                     type='MapHungarianAssigner',
                     cls_cost=dict(type='mmdet.FocalLossCost', weight=2.0),
                     pts_cost=dict(type='OrderedPtsL1Cost', weight=5.0)),
                 loss_cls: dict = dict(
                     type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                     loss_weight=2.0),
                 loss_pts: dict = dict(type='mmdet.L1Loss', loss_weight=5.0),
                 loss_dir_weight: float = 0.005,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_vec = num_vec
        self.num_pts = num_pts
        self.num_aux_vec = num_aux_vec
        self.aux_repeat_k = aux_repeat_k
        self.aux_loss_weight = aux_loss_weight
        self.max_per_img = max_per_img
        self.loss_dir_weight = loss_dir_weight
        self.with_cp = with_cp
        if len(pc_range) == 6:
            pc_range = (pc_range[0], pc_range[1], pc_range[3], pc_range[4])
        self.register_buffer('pc_range', torch.tensor(pc_range, dtype=torch.float32),
                             persistent=False)

        self.bev_proj = nn.Conv2d(in_channels, embed_dims, 1)
        self.query_norm = nn.LayerNorm(embed_dims)
        self.pts_embed = nn.Embedding(num_pts, embed_dims)
        self.pts_pos = nn.Embedding(num_pts, embed_dims)
        self.inst_pos = nn.Embedding(num_vec + num_aux_vec, embed_dims)
        self.aux_queries = nn.Embedding(num_aux_vec, embed_dims) if num_aux_vec else None
        self.reference_points = nn.Linear(embed_dims, 2)
        self.layers = nn.ModuleList(
            MapDecoderLayer(embed_dims, num_heads, num_points, ffn_dims, dropout, num_pts,
                            self_attn)
            for _ in range(num_layers))
        self.cls_branches = nn.ModuleList(
            MLP(embed_dims, embed_dims, num_classes, 2) for _ in range(num_layers))
        self.reg_branches = nn.ModuleList(
            MLP(embed_dims, embed_dims, 2, 3) for _ in range(num_layers))
        for cls_branch, reg_branch in zip(self.cls_branches, self.reg_branches):
            nn.init.constant_(cls_branch.layers[-1].bias, bias_init_with_prob(0.01))
            # start every layer at its reference points (Deformable DETR's refinement init)
            nn.init.zeros_(reg_branch.layers[-1].weight)
            nn.init.zeros_(reg_branch.layers[-1].bias)
        # initial points from content + position: a small gain keeps them spread over the ROI
        # (logit std ~1.3) instead of saturating at its borders
        nn.init.xavier_uniform_(self.reference_points.weight, gain=0.5)
        nn.init.zeros_(self.reference_points.bias)

        self.assigner = TASK_UTILS.build(assigner)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_pts = MODELS.build(loss_pts)

    # ------------------------------------------------------------------ forward
    def forward(self, bev: Tensor, instance_queries: Tensor) -> dict[str, Tensor]:
        """Decode ``bev (B, C, bev_h, bev_w)`` with ``instance_queries (B, num_vec, D)``.

        Returns:
            ``cls_scores (L, B, num_vec, C)`` logits and ``pts_preds (L, B, num_vec, P, 2)``
            normalized to [0, 1]; in training with the one-to-many group also
            ``aux_cls_scores`` / ``aux_pts_preds`` for its ``num_aux_vec`` queries.
        """
        batch, _, bev_h, bev_w = bev.shape
        if instance_queries.shape[1] != self.num_vec:
            raise ValueError(f'expected {self.num_vec} instance queries, '
                             f'got {instance_queries.shape[1]}')
        param = self.reference_points.weight
        value = self.bev_proj(bev.to(param.dtype)).flatten(2).transpose(1, 2)
        # filled on the device: torch.tensor(..., device=) would be a host-to-device copy
        spatial_shapes = torch.full((1, 2), bev_w, dtype=torch.long, device=bev.device)
        spatial_shapes[:, 0] = bev_h
        level_start_index = spatial_shapes.new_zeros(1)

        inst = self.query_norm(instance_queries.to(param.dtype))
        with_aux = self.training and self.aux_queries is not None
        if with_aux:
            inst = torch.cat([inst, self.aux_queries.weight.expand(batch, -1, -1)], dim=1)
        num_inst = inst.shape[1]
        query = (inst[:, :, None] + self.pts_embed.weight).flatten(1, 2)
        query_pos = (self.inst_pos.weight[:num_inst, None] + self.pts_pos.weight).flatten(0, 1)
        query_pos = query_pos.expand(batch, -1, -1)
        group_mask = self._group_mask(num_inst, bev.device) if with_aux else None
        # the points stay fp32 under bf16 autocast: a bf16 coordinate near 1 is only good to
        # 2^-8 of the ROI (0.23 m over 60 m), as coarse as the tightest Chamfer threshold
        ref = self.reference_points(query + query_pos).float().sigmoid()

        all_cls, all_pts = [], []
        for layer, cls_branch, reg_branch in zip(self.layers, self.cls_branches,
                                                 self.reg_branches):
            args = (query, query_pos, value, ref, spatial_shapes, level_start_index, group_mask)
            if self.with_cp and self.training and torch.is_grad_enabled():
                query = checkpoint(layer, *args, use_reentrant=False)
            else:
                query = layer(*args)
            feats = query.view(batch, num_inst, self.num_pts, -1)
            all_cls.append(cls_branch(feats.mean(2)))
            new_ref = (inverse_sigmoid(ref) + reg_branch(query).float()).sigmoid()
            all_pts.append(new_ref.view(batch, num_inst, self.num_pts, 2))
            ref = new_ref.detach()
        cls_scores, pts_preds = torch.stack(all_cls), torch.stack(all_pts)
        out = dict(cls_scores=cls_scores[:, :, :self.num_vec],
                   pts_preds=pts_preds[:, :, :self.num_vec])
        if with_aux:
            out.update(aux_cls_scores=cls_scores[:, :, self.num_vec:],
                       aux_pts_preds=pts_preds[:, :, self.num_vec:])
        return out

    def denormalize(self, pts: Tensor) -> Tensor:
        """Normalized points -> metres in the LiDAR frame."""
        return denormalize_pts(pts.float(), self.pc_range)

    def _group_mask(self, num_inst: int, device: torch.device) -> Tensor:
        """``(V, V)`` instance mask keeping the main and one-to-many groups apart in
        self-attention (True = blocked), so the main queries behave the same whether or not
        the auxiliary group is present."""
        group = torch.arange(num_inst, device=device) >= self.num_vec
        return group[:, None] != group[None, :]

    # ------------------------------------------------------------------ training
    def loss(self, bev: Tensor, instance_queries: Tensor,
             batch_data_samples: list) -> dict[str, Tensor]:
        """Forward and compute losses against ``data_sample.gt_instances_3d``."""
        preds = self(bev, instance_queries)
        return self.loss_by_feat(preds, [s.gt_instances_3d for s in batch_data_samples])

    def loss_by_feat(self, preds: dict[str, Tensor],
                     batch_gt_instances: list[InstanceData]) -> dict[str, Tensor]:
        """Losses of every decoder layer: ``loss_cls/pts/dir`` for the last layer,
        ``d{i}.loss_*`` for earlier ones and ``o2m.``-prefixed ones for the one-to-many group.

        ``batch_gt_instances`` hold ``labels (M,)``, ``shifts (M, S, P, 2)`` in metres and
        ``shifts_valid (M, S)``. Every layer, sample and group is matched from one copy of
        all their cost matrices to the host (:meth:`_match`); nothing else waits for the
        device.
        """
        device = preds['cls_scores'].device
        gts = [self._prepare_gt(gt, device) for gt in batch_gt_instances]
        groups = [(preds['cls_scores'], preds['pts_preds'], gts)]
        if 'aux_cls_scores' in preds:
            rep = [InstanceData(labels=g.labels.repeat(self.aux_repeat_k),
                                shifts=g.shifts.repeat(self.aux_repeat_k, 1, 1, 1),
                                shifts_valid=g.shifts_valid.repeat(self.aux_repeat_k, 1))
                   for g in gts]
            groups.append((preds['aux_cls_scores'], preds['aux_pts_preds'], rep))
        targets = self._match(groups)
        losses = self._loss_layers(*groups[0][:2], targets[0])
        if len(groups) > 1:
            aux = self._loss_layers(*groups[1][:2], targets[1])
            losses.update({f'o2m.{k}': v * self.aux_loss_weight for k, v in aux.items()})
        return losses

    def _prepare_gt(self, gt: InstanceData, device: torch.device) -> InstanceData:
        """GT as tensors on ``device`` with shifts normalized over the ROI."""
        shifts = torch.as_tensor(gt.shifts, dtype=torch.float32, device=device)
        return InstanceData(
            labels=torch.as_tensor(gt.labels, device=device).long(),
            shifts=normalize_pts(shifts, self.pc_range),
            shifts_valid=torch.as_tensor(gt.shifts_valid, device=device).bool())

    def _match(self, groups: list[tuple[Tensor, Tensor, list[InstanceData]]]) -> list[dict]:
        """One-to-one targets of every ``(cls (L, B, V, C), pts (L, B, V, P, 2), gts)`` group.

        The costs of all layers of a sample are built in one go on the device; all matrices
        go to the host together for ``linear_sum_assignment``, and the matched indices come
        back to the device in one copy. Returns per group ``layer, sample, query`` (positives,
        layer-major, queries ascending), ``labels (L, B, V)`` (``num_classes`` = background),
        ``targets (K, P, 2)`` (the matched GT in its cheapest valid order) and the host count
        ``num_pos_per_layer``.
        """
        costs, orders, plans = [], [], []
        for all_cls, all_pts, gts in groups:
            num_layers, _, num_q = all_cls.shape[:3]
            plan = []
            for b, gt in enumerate(gts):
                num_gt = len(gt)
                if num_gt == 0 or num_q == 0:
                    orders.append(None)
                    continue
                cost, order = self.assigner.costs(
                    InstanceData(scores=all_cls[:, b].flatten(0, 1).detach().float(),
                                 pts=all_pts[:, b].flatten(0, 1).detach().float()), gt)
                plan.append((b, len(costs), num_gt))
                costs.extend(cost.view(num_layers, num_q, num_gt))
                orders.append(order)
            plans.append(plan)
        device = groups[0][0].device
        index, sizes = _matched_indices(
            costs, plans, [(cls.shape[0], cls.shape[2]) for cls, _, _ in groups],
            [[len(gt) for gt in gts] for _, _, gts in groups], device)

        targets = []
        for (all_cls, _, gts), group_index, size in zip(groups, index.split(sizes, 1), sizes):
            num_layers, batch, num_q = all_cls.shape[:3]
            layer, sample, query, gt_idx, order_idx = group_index
            labels = torch.full((num_layers, batch, num_q), self.num_classes,
                                dtype=torch.long, device=device)
            num_pos = size // num_layers
            if num_pos:
                gt_orders = torch.cat([o.flatten() for o in orders[:len(gts)] if o is not None])
                num_orders = max(gt.shifts.shape[1] for gt in gts)
                shifts = torch.cat([F.pad(gt.shifts, (0, 0, 0, 0, 0, num_orders -
                                                      gt.shifts.shape[1])) for gt in gts])
                labels[layer, sample, query] = torch.cat([gt.labels for gt in gts])[gt_idx]
                matched = shifts[gt_idx, gt_orders[order_idx]]
            else:
                matched = all_cls.new_zeros(0, self.num_pts, 2)
            orders = orders[len(gts):]
            targets.append(dict(layer=layer, sample=sample, query=query, labels=labels,
                                targets=matched, num_pos_per_layer=num_pos))
        return targets

    def _loss_layers(self, all_cls: Tensor, all_pts: Tensor, target: dict) -> dict[str, Tensor]:
        losses = {}
        num_layers = all_cls.shape[0]
        count = target['num_pos_per_layer']
        # the positives of a layer are the same on every layer; averaged over the ranks
        num_pos = self._num_pos(count, all_cls)
        all_pos = all_pts[target['layer'], target['sample'], target['query']]
        for i in range(num_layers):
            prefix = '' if i == num_layers - 1 else f'd{i}.'
            span = slice(i * count, (i + 1) * count)
            cls_loss, pts_loss, dir_loss = self._loss_single(
                all_cls[i], all_pts[i], target['labels'][i], all_pos[span],
                target['targets'][span], num_pos)
            losses[f'{prefix}loss_cls'] = cls_loss
            losses[f'{prefix}loss_pts'] = pts_loss
            losses[f'{prefix}loss_dir'] = dir_loss
        return losses

    @staticmethod
    def _num_pos(count: int, ref: Tensor) -> float | Tensor:
        """Positives per rank, at least 1: a host number unless the ranks average it (then a
        device tensor, without ``.item()``)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return max(float(count), 1.0)
        return reduce_mean(ref.new_full((), float(count), dtype=torch.float32)).clamp(min=1)

    def _loss_single(self, cls_scores: Tensor, pts_preds: Tensor, labels: Tensor,
                     pos_preds: Tensor, pos_targets: Tensor,
                     num_pos: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Losses of one layer; ``cls_scores (B, V, C)``, ``pts_preds (B, V, P, 2)``,
        ``labels (B, V)``, matched ``pos_preds`` / ``pos_targets (K, P, 2)``."""
        cls_scores = cls_scores.float()
        loss_cls = self.loss_cls(cls_scores.flatten(0, 1), labels.flatten(),
                                 avg_factor=num_pos)
        if len(pos_preds) == 0:
            zero = pts_preds.float().sum() * 0
            return loss_cls, zero, zero
        pos_preds = pos_preds.float()
        # MapTR (maptr_head.py, loss_single): both sums are divided by the number of positives
        # only, not by the points: |dx| + |dy| summed over all P points of a matched instance
        # (normalized coordinates), and (1 - cos) summed over its P - 1 segment directions.
        loss_pts = self.loss_pts(pos_preds, pos_targets, avg_factor=num_pos)
        # directions in metres: the ROI is not square, normalized angles would be skewed
        pred_dir = denormalize_pts(pos_preds, self.pc_range).diff(dim=1)
        gt_dir = denormalize_pts(pos_targets, self.pc_range).diff(dim=1)
        cos = F.cosine_similarity(pred_dir, gt_dir, dim=-1)
        loss_dir = (1 - cos).sum() / num_pos * self.loss_dir_weight
        return loss_cls, loss_pts, loss_dir

    # ------------------------------------------------------------------ inference
    def predict(self, bev: Tensor, instance_queries: Tensor,
                batch_data_samples: Optional[list] = None) -> list[InstanceData]:
        """Forward and decode; see :meth:`predict_by_feat`."""
        return self.predict_by_feat(self(bev, instance_queries))

    def predict_by_feat(self, preds: dict[str, Tensor]) -> list[InstanceData]:
        """Top-k over (query, class) sigmoid scores of the last layer (MapTR's NMS-free coder).

        Returns:
            per sample ``InstanceData(polylines (K, P, 2) metres in the LiDAR frame,
            scores (K,), labels (K,))``.
        """
        cls_scores = preds['cls_scores'][-1].float()
        pts_preds = preds['pts_preds'][-1].float()
        results = []
        for cls_b, pts_b in zip(cls_scores, pts_preds):
            scores, idx = cls_b.sigmoid().flatten().topk(min(self.max_per_img, cls_b.numel()))
            labels = idx % self.num_classes
            query = torch.div(idx, self.num_classes, rounding_mode='floor')
            results.append(InstanceData(
                polylines=self.denormalize(pts_b[query]),
                scores=scores, labels=labels))
        return results
