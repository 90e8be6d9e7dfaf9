"""Match cost for ordered polylines with several equivalent point orders."""
from __future__ import annotations

from typing import Optional

import torch
from mmdet3d.registry import TASK_UTILS
from mmengine.structures import InstanceData
from torch import Tensor


@TASK_UTILS.register_module()
class OrderedPtsL1Cost:
    """L1 distance between a predicted point sequence and every order of every GT.

    Unlike mmdet's costs this returns one cost per (query, GT, order) so the assigner can
    take the cheapest valid order per GT and reuse it as the regression target.

    Args:
        weight: cost weight.
    """

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def __call__(self,
                 pred_instances: InstanceData,
                 gt_instances: InstanceData,
                 img_meta: Optional[dict] = None,
                 **kwargs) -> Tensor:
        """Return the ``(Q, M, S)`` weighted L1 cost, summed over points and coordinates.

        ``pred_instances.pts``: ``(Q, P, 2)``; ``gt_instances.shifts``: ``(M, S, P, 2)``, both in
        the same (normalized) coordinates. Padded orders get ``+inf``.
        """
        pts = pred_instances.pts
        shifts = gt_instances.shifts
        num_gt, num_orders = shifts.shape[:2]
        cost = torch.cdist(pts.flatten(1).float(), shifts.flatten(2).flatten(0, 1).float(), p=1)
        cost = cost.view(pts.shape[0], num_gt, num_orders) * self.weight
        valid = gt_instances.get('shifts_valid', None)
        if valid is not None:
            cost = cost.masked_fill(~valid.bool()[None], float('inf'))
        return cost
