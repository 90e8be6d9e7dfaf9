"""Depth-weighted BEV sum pooling in plain PyTorch (no custom CUDA op).

Lift-splat sums ``depth[p, d] · feat[p]`` over every frustum point (pixel p, depth bin d) that
falls into a BEV cell. Materialising that outer product costs (points × channels) memory in
the forward and again in the backward; this autograd function instead walks the valid points
in chunks with ``index_add_``, so only ``chunk_size × C`` floats are alive at a time and only
the inputs and the integer indices are saved for the backward.
"""
import torch
from torch import Tensor


class _DepthWeightedSumPool(torch.autograd.Function):

    @staticmethod
    @torch.amp.custom_fwd(device_type='cuda', cast_inputs=torch.float32)
    def forward(ctx, depth: Tensor, feats: Tensor, point_idx: Tensor, cell_idx: Tensor,
                num_cells: int, chunk_size: int) -> Tensor:
        num_bins = depth.shape[1]
        flat_depth = depth.reshape(-1)
        out = feats.new_zeros(num_cells, feats.shape[1])
        for s in range(0, point_idx.numel(), chunk_size):
            pidx = point_idx[s:s + chunk_size]
            weights = flat_depth[pidx].unsqueeze(1)
            out.index_add_(0, cell_idx[s:s + chunk_size], feats[pidx // num_bins] * weights)
        ctx.save_for_backward(depth, feats, point_idx, cell_idx)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type='cuda')
    def backward(ctx, grad_out: Tensor):
        depth, feats, point_idx, cell_idx = ctx.saved_tensors
        num_bins, chunk = depth.shape[1], ctx.chunk_size
        flat_depth = depth.reshape(-1)
        need_depth, need_feats = ctx.needs_input_grad[:2]
        grad_depth = torch.zeros_like(flat_depth) if need_depth else None
        grad_feats = torch.zeros_like(feats) if need_feats else None
        for s in range(0, point_idx.numel(), chunk):
            pidx = point_idx[s:s + chunk]
            pix = pidx // num_bins
            grad = grad_out[cell_idx[s:s + chunk]]
            if need_feats:
                grad_feats.index_add_(0, pix, grad * flat_depth[pidx].unsqueeze(1))
            if need_depth:
                grad_depth.index_add_(0, pidx, (grad * feats[pix]).sum(1))
        if need_depth:
            grad_depth = grad_depth.view_as(depth)
        return grad_depth, grad_feats, None, None, None, None


def depth_weighted_bev_pool(depth: Tensor, feats: Tensor, point_idx: Tensor, cell_idx: Tensor,
                            num_cells: int, chunk_size: int = 1 << 18) -> Tensor:
    """Sum-pool depth-weighted pixel features into BEV cells.

    Args:
        depth: (P, D) depth distribution of P pixels.
        feats: (P, C) context features of the same pixels.
        point_idx: (K,) int64 flat index ``pixel · D + bin`` of each kept frustum point.
        cell_idx: (K,) int64 flat output cell of each kept point, in [0, num_cells).
        num_cells: number of output cells (e.g. B · bev_h · bev_w).
        chunk_size: frustum points processed at once (bounds the temporary memory).

    Returns:
        (num_cells, C) pooled features (float32 under autocast).
    """
    return _DepthWeightedSumPool.apply(depth, feats, point_idx, cell_idx, num_cells, chunk_size)
