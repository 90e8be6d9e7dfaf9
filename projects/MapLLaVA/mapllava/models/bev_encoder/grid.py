"""The BEV grid convention shared by the BEV encoder and the map head.

All BEV maps live in the LiDAR frame of the sample (nuScenes LIDAR_TOP: x right, y forward).
``pc_range = (x_min, y_min, z_min, x_max, y_max, z_max)``, default (−15, −30, −10, 15, 30, 10),
i.e. ``roi_size = (W, H) = (x_max − x_min, y_max − y_min) = (30, 60)`` metres.

A BEV tensor is ``(B, C, bev_h, bev_w)`` (default 200 × 100): rows run along y, columns along
x. Row 0 is at y = y_min (behind the ego car), column 0 at x = x_min (its left), so the
centre of cell (r, c) is ``(x_min + (c + 0.5)·dx, y_min + (r + 0.5)·dy)`` with
``dx = W / bev_w`` and ``dy = H / bev_h``.

Normalised coordinates (used by the map head for deformable-attention reference points) are
``u = (x − x_min) / W`` (columns) and ``v = (y − y_min) / H`` (rows), both in [0, 1]; the grid
``2·(u, v) − 1`` samples the same point with ``F.grid_sample(..., align_corners=False)``.
mmdet3d voxel coordinates ``(batch, z, y, x)`` and ``PointPillarsScatter`` canvases
``(B, C, ny, nx)`` already follow this layout over the voxeliser's ``point_cloud_range``.
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_PC_RANGE = (-15.0, -30.0, -10.0, 15.0, 30.0, 10.0)
DEFAULT_BEV_SIZE = (200, 100)


class BEVGrid:
    """A metric BEV grid over ``pc_range`` with ``bev_size = (bev_h, bev_w)`` cells."""

    def __init__(self, pc_range: Sequence[float] = DEFAULT_PC_RANGE,
                 bev_size: Sequence[int] = DEFAULT_BEV_SIZE) -> None:
        if len(pc_range) != 6:
            raise ValueError(f'pc_range needs 6 values, got {pc_range}')
        self.pc_range = tuple(float(v) for v in pc_range)
        self.bev_h, self.bev_w = (int(v) for v in bev_size)
        x0, y0, _, x1, y1, _ = self.pc_range
        self.dx = (x1 - x0) / self.bev_w
        self.dy = (y1 - y0) / self.bev_h

    @property
    def xy_range(self) -> Tuple[float, float, float, float]:
        """``(x_min, y_min, x_max, y_max)``."""
        x0, y0, _, x1, y1, _ = self.pc_range
        return x0, y0, x1, y1

    @property
    def num_cells(self) -> int:
        return self.bev_h * self.bev_w

    def scaled(self, factor: int) -> 'BEVGrid':
        """The same ROI with ``factor`` × finer cells (pooling grid before a downsample)."""
        return BEVGrid(self.pc_range, (self.bev_h * factor, self.bev_w * factor))

    def flat_index(self, points: Tensor) -> Tuple[Tensor, Tensor]:
        """Flat cell index ``r·bev_w + c`` of (..., 3) LiDAR points and whether they fall inside
        the ROI and z range (the index of an outside point is meaningless)."""
        x0, y0, z0, x1, y1, z1 = self.pc_range
        col = torch.floor((points[..., 0] - x0) / self.dx).long()
        row = torch.floor((points[..., 1] - y0) / self.dy).long()
        z = points[..., 2]
        valid = ((col >= 0) & (col < self.bev_w) & (row >= 0) & (row < self.bev_h)
                 & (z >= z0) & (z < z1))
        return row * self.bev_w + col, valid

    def cell_centers(self, device: torch.device = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """(bev_h, bev_w, 2) metric (x, y) of every cell centre."""
        x0, y0, _, _, _, _ = self.pc_range
        xs = x0 + (torch.arange(self.bev_w, device=device, dtype=dtype) + 0.5) * self.dx
        ys = y0 + (torch.arange(self.bev_h, device=device, dtype=dtype) + 0.5) * self.dy
        yy, xx = torch.meshgrid(ys, xs, indexing='ij')
        return torch.stack((xx, yy), dim=-1)


def resample_bev(bev: Tensor, src_range: Sequence[float], grid: BEVGrid) -> Tensor:
    """Bilinearly resample a ``(B, C, h, w)`` BEV map covering ``src_range`` =
    (x_min, y_min, x_max, y_max) with the same row/column convention onto ``grid``.

    Outside ``src_range`` the result is zero. An identical grid is returned unchanged.
    """
    src = tuple(float(v) for v in src_range)
    if src == grid.xy_range and tuple(bev.shape[-2:]) == (grid.bev_h, grid.bev_w):
        return bev
    sx0, sy0, sx1, sy1 = src
    xy = grid.cell_centers(bev.device, bev.dtype)
    norm = torch.stack((2 * (xy[..., 0] - sx0) / (sx1 - sx0) - 1,
                        2 * (xy[..., 1] - sy0) / (sy1 - sy0) - 1), dim=-1)
    norm = norm.unsqueeze(0).expand(bev.shape[0], -1, -1, -1)
    return F.grid_sample(bev, norm, mode='bilinear', padding_mode='zeros', align_corners=False)
