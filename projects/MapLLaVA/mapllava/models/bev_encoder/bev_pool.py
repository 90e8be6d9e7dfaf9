"""Depth-weighted BEV sum pooling in plain PyTorch (no custom CUDA op), with static shapes.

Lift-splat sums ``depth[p, d] · feat[p]`` over every frustum point (pixel p, depth bin d) that
falls into a BEV cell. Materialising that outer product costs (points × channels) memory in
the forward and again in the backward; this autograd function instead walks the pixels in
chunks with ``index_add_``, so only ``chunk_size × C`` floats are alive at a time and only the
inputs and the integer cell indices are saved for the backward.

Every frustum point is pooled, the ones outside the grid into an extra cell that is dropped.
Selecting the inside points instead (``nonzero``) would give data-dependent shapes: a host
synchronisation on the GPU and a graph break under ``torch.compile``.
"""
import torch
from torch import Tensor


class _DepthWeightedSumPool(torch.autograd.Function):

    @staticmethod
    @torch.amp.custom_fwd(device_type='cuda', cast_inputs=torch.float32)
    def forward(ctx, depth: Tensor, feats: Tensor, cell_idx: Tensor, num_cells: int,
                chunk_size: int) -> Tensor:
        num_pixels, num_bins = depth.shape
        step = max(1, chunk_size // num_bins)
        out = feats.new_zeros(num_cells + 1, feats.shape[1])
        for s in range(0, num_pixels, step):
            e = min(s + step, num_pixels)
            points = depth[s:e, :, None] * feats[s:e, None, :]
            out.index_add_(0, cell_idx[s * num_bins:e * num_bins], points.flatten(0, 1))
        ctx.save_for_backward(depth, feats, cell_idx)
        ctx.step = step
        return out[:num_cells]

    @staticmethod
    @torch.amp.custom_bwd(device_type='cuda')
    def backward(ctx, grad_out: Tensor):
        depth, feats, cell_idx = ctx.saved_tensors
        num_pixels, num_bins = depth.shape
        need_depth, need_feats = ctx.needs_input_grad[:2]
        # the dropped cell has no gradient
        grad_cells = torch.cat([grad_out, grad_out.new_zeros(1, grad_out.shape[1])])
        grad_depth = torch.empty_like(depth) if need_depth else None
        grad_feats = torch.empty_like(feats) if need_feats else None
        for s in range(0, num_pixels, ctx.step):
            e = min(s + ctx.step, num_pixels)
            grad = grad_cells[cell_idx[s * num_bins:e * num_bins]].view(e - s, num_bins, -1)
            if need_feats:
                grad_feats[s:e] = (grad * depth[s:e, :, None]).sum(1)
            if need_depth:
                grad_depth[s:e] = (grad * feats[s:e, None, :]).sum(2)
        return grad_depth, grad_feats, None, None, None


def depth_weighted_bev_pool(depth: Tensor, feats: Tensor, cell_idx: Tensor, num_cells: int,
                            chunk_size: int = 1 << 18) -> Tensor:
    """Sum-pool depth-weighted pixel features into BEV cells.

    Args:
        depth: (P, D) depth distribution of P pixels.
        feats: (P, C) context features of the same pixels.
        cell_idx: (P · D,) int64 output cell of frustum point ``pixel · D + bin``, in
            [0, num_cells]; ``num_cells`` marks a point outside the grid (dropped).
        num_cells: number of output cells (e.g. B · bev_h · bev_w).
        chunk_size: frustum points processed at once (bounds the temporary memory).

    Returns:
        (num_cells, C) pooled features (float32 under autocast).
    """
    if cell_idx.shape != (depth.numel(),):
        raise ValueError(f'cell_idx must have one entry per frustum point, {depth.numel()}; '
                         f'got shape {tuple(cell_idx.shape)}')
    return _DepthWeightedSumPool.apply(depth, feats, cell_idx, num_cells, chunk_size)
