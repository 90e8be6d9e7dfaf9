"""One-to-one matching of map queries to GT polylines, choosing each GT's point order."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from mmdet.models.task_modules import AssignResult, BaseAssigner
from mmdet3d.registry import TASK_UTILS
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment
from torch import Tensor

Matches = list[tuple[np.ndarray, np.ndarray]]


def solve_assignments(costs: Sequence[Tensor]) -> Matches:
    """Hungarian matching of many ``(Q, M)`` cost matrices, with one device-to-host copy.

    Returns ``(query indices, GT indices)`` per matrix, as ``linear_sum_assignment`` does.
    The shapes are known on the host, so nothing else waits for the device.
    """
    if not costs:
        return []
    flat = torch.cat([c.detach().float().reshape(-1) for c in costs]).cpu().numpy()
    matches, start = [], 0
    for cost in costs:
        rows, cols = cost.shape
        mat = flat[start:start + rows * cols].reshape(rows, cols)
        start += rows * cols
        if not np.isfinite(mat).all():
            if rows and np.isposinf(mat).all(0).any():
                raise ValueError('every GT polyline needs at least one valid order in '
                                 'shifts_valid')
            raise ValueError('non-finite matching cost')
        matches.append(linear_sum_assignment(mat))
    return matches


@TASK_UTILS.register_module()
class MapHungarianAssigner(BaseAssigner):
    """Hungarian matching with a classification cost plus an order-invariant point cost.

    The point cost of a (query, GT) pair is the minimum over the GT's valid orders
    (``shifts_valid``); the winning order index is stored as the extra property
    ``shift_inds`` so the loss regresses towards exactly that order.

    :meth:`costs` builds the cost on the predictions' device and :func:`solve_assignments`
    matches many cost matrices (every decoder layer and sample of a step) with one copy to the
    host; :meth:`assign` is both for one matrix.

    Args:
        cls_cost: config of a cost on ``pred_instances.scores`` (logits) vs ``labels``.
        pts_cost: config of a cost returning ``(Q, M, S)`` (e.g. ``OrderedPtsL1Cost``).
    """

    def __init__(self,
                 cls_cost: dict = dict(type='mmdet.FocalLossCost', weight=2.0),
                 pts_cost: dict = dict(type='OrderedPtsL1Cost', weight=5.0)) -> None:
        self.cls_cost = TASK_UTILS.build(cls_cost)
        self.pts_cost = TASK_UTILS.build(pts_cost)

    def costs(self, pred_instances: InstanceData, gt_instances: InstanceData,
              img_meta: Optional[dict] = None) -> tuple[Tensor, Tensor]:
        """``(Q, M)`` fp32 matching cost (no gradient) and the ``(Q, M)`` index of the cheapest
        valid order of each GT, on the predictions' device. Q may be several layers' queries."""
        pts_cost, order = self.pts_cost(pred_instances, gt_instances, img_meta).min(-1)
        cost = self.cls_cost(pred_instances, gt_instances, img_meta) + pts_cost
        return cost.detach().float(), order

    def assign(self,
               pred_instances: InstanceData,
               gt_instances: InstanceData,
               img_meta: Optional[dict] = None,
               **kwargs) -> AssignResult:
        """Match queries (``scores (Q, C)``, ``pts (Q, P, 2)``) to GT (``labels``, ``shifts``,
        ``shifts_valid``).

        Returns:
            ``AssignResult`` with 1-based ``gt_inds`` (0 = background), ``labels`` (-1 for
            background) and extra property ``shift_inds`` (-1 for background).
        """
        num_q = pred_instances.pts.shape[0]
        num_gt = len(gt_instances)
        device = pred_instances.pts.device
        gt_inds = torch.zeros(num_q, dtype=torch.long, device=device)
        labels = torch.full((num_q,), -1, dtype=torch.long, device=device)
        shift_inds = torch.full((num_q,), -1, dtype=torch.long, device=device)
        if num_gt and num_q:
            cost, order = self.costs(pred_instances, gt_instances, img_meta)
            q_idx, g_idx = (torch.from_numpy(i).to(device)
                            for i in solve_assignments([cost])[0])
            gt_inds[q_idx] = g_idx + 1
            labels[q_idx] = gt_instances.labels[g_idx].long()
            shift_inds[q_idx] = order[q_idx, g_idx]
        result = AssignResult(num_gt, gt_inds, None, labels)
        result.set_extra_property('shift_inds', shift_inds)
        return result
