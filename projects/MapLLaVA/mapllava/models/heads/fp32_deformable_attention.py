"""mmcv's multi-scale deformable attention, kept in fp32 under mixed precision."""
from __future__ import annotations

import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmdet3d.registry import MODELS
from torch import Tensor


@MODELS.register_module()
class FP32MultiScaleDeformableAttention(MultiScaleDeformableAttention):
    """``MultiScaleDeformableAttention`` that runs in fp32 whatever autocast says.

    mmcv 2.1's CUDA kernel (``ms_deform_attn_cuda.cu``) dispatches float, double and half
    only (``AT_DISPATCH_FLOATING_TYPES_AND_HALF``, open-mmlab/mmcv#2878), and
    ``MultiScaleDeformableAttnFunction`` casts the sampling locations and weights to the
    dtype of ``value``. Under bf16 autocast ``value_proj`` hands it a bf16 ``value`` and the
    step fails on a GPU. Here autocast is switched off for the whole module and its floating
    inputs are cast to fp32, so the kernel (and the CPU fallback) always sees fp32; its four
    small projections run in fp32 too. The output is fp32; the caller's autocast casts it on.
    """

    def forward(self, query: Tensor, *args, **kwargs) -> Tensor:
        """Same signature as mmcv's ``MultiScaleDeformableAttention.forward``."""

        def fp32(x):
            return x.float() if isinstance(x, Tensor) and x.is_floating_point() else x

        with torch.autocast(query.device.type, enabled=False):
            return super().forward(fp32(query), *[fp32(a) for a in args],
                                   **{k: fp32(v) for k, v in kwargs.items()})
