"""LSS view transform: image features → per-pixel depth distribution → LiDAR-frame BEV."""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmcv.cnn import ConvModule
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

from .bev_pool import depth_weighted_bev_pool
from .depth_targets import depth_bce_loss, depth_bin_targets
from .grid import DEFAULT_BEV_SIZE, DEFAULT_PC_RANGE, BEVGrid


def stack_calib(data_samples: Sequence, key: str, required: bool = True) -> Optional[Tensor]:
    """(B, N, 4, 4) float64 CPU tensor of a per-camera matrix from every sample's metainfo.

    Accepts numpy arrays, lists of arrays or tensors; 3×3 matrices are padded to 4×4.
    Returns None for a missing optional key.
    """
    mats = []
    for sample in data_samples:
        mat = sample.metainfo.get(key)
        if mat is None:
            if required:
                raise KeyError(f'data_sample.metainfo has no {key!r}')
            return None
        if isinstance(mat, Tensor):
            mat = mat.detach().to('cpu', torch.float64)
        elif isinstance(mat, (list, tuple)):
            mat = torch.stack([torch.as_tensor(np.asarray(m), dtype=torch.float64) for m in mat])
        else:
            mat = torch.as_tensor(np.asarray(mat), dtype=torch.float64)
        if mat.shape[-2:] == (3, 3):
            padded = torch.eye(4, dtype=torch.float64).repeat(*mat.shape[:-2], 1, 1)
            padded[..., :3, :3] = mat
            mat = padded
        mats.append(mat)
    return torch.stack(mats)


@torch.compiler.disable
def camera_matrices(data_samples: Sequence, device: torch.device) -> Tuple[Tensor, Tensor]:
    """float32 ``(B, N, 4, 4)`` ``inverse(img_aug_matrix)`` and ``img2lidar`` on ``device``.

    Read from the samples' metainfo on the host, outside any compiled graph (so a compiled
    model sees new calibration as new input values, not as constants to recompile for), and
    copied from pinned memory without waiting for the GPU.
    """
    cam2img = stack_calib(data_samples, 'cam2img')
    lidar2cam = stack_calib(data_samples, 'lidar2cam')
    img_aug = stack_calib(data_samples, 'img_aug_matrix', required=False)
    if img_aug is None:
        img_aug = torch.eye(4, dtype=torch.float64).expand_as(cam2img)
    mats = torch.stack((torch.linalg.inv(img_aug),
                        torch.linalg.inv(lidar2cam) @ torch.linalg.inv(cam2img))).float()
    if device.type == 'cuda':
        mats = mats.pin_memory().to(device, non_blocking=True)
    else:
        mats = mats.to(device)
    return mats[0], mats[1]


@MODELS.register_module()
class LSSViewTransform(BaseModule):
    """Lift-splat view transform (as BEVFusion's ``LSSTransform``, pure PyTorch pooling).

    A depth net predicts, for each feature pixel, a softmax over the depth candidates
    ``torch.arange(*depth_bins)`` and ``out_channels`` context features. Every (pixel, depth)
    frustum point is mapped back to the LiDAR frame with the sample's
    ``inverse(img_aug_matrix)`` → ``inverse(cam2img)`` → ``inverse(lidar2cam)`` and the
    depth-weighted features are sum-pooled into a ``downsample``× finer grid over
    ``pc_range``, then convolved down to ``bev_size`` (see ``grid.py`` for the convention).

    Args:
        in_channels: channels of the image feature map.
        out_channels: BEV (context) channels.
        depth_bins: (start, stop, step) of the depth candidates in metres.
        pc_range: BEV ROI and z range, (x_min, y_min, z_min, x_max, y_max, z_max).
        bev_size: (bev_h, bev_w) of the output.
        downsample: pool on a grid this many times finer, then reduce with strided convs.
        depthnet_channels: width of the 3×3 conv before the depth/context 1×1 conv; 0 for a
            single 1×1 conv (BEVFusion's depthnet), None for ``in_channels``.
        norm_cfg: norm layer of the convs.
        pool_chunk_size: frustum points pooled at once (memory bound of the splat).
        depth_loss_weight: weight of the BEVDepth-style LiDAR depth loss (:meth:`depth_loss`);
            0 turns it off and leaves the module exactly as without it. When > 0, ``forward``
            keeps its last depth distribution for :meth:`depth_loss`.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 depth_bins: Sequence[float] = (1.0, 60.0, 0.5),
                 pc_range: Sequence[float] = DEFAULT_PC_RANGE,
                 bev_size: Sequence[int] = DEFAULT_BEV_SIZE,
                 downsample: int = 1,
                 depthnet_channels: Optional[int] = None,
                 norm_cfg: dict = dict(type='BN'),
                 pool_chunk_size: int = 1 << 18,
                 depth_loss_weight: float = 0.0,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.grid = BEVGrid(pc_range, bev_size)
        self.pool_grid = self.grid.scaled(downsample)
        self.pool_chunk_size = pool_chunk_size
        self.register_buffer('depth_values', torch.arange(*depth_bins, dtype=torch.float32),
                             persistent=False)
        self.num_bins = self.depth_values.numel()
        self.depth_bins = tuple(float(v) for v in depth_bins)
        if depth_loss_weight < 0:
            raise ValueError(f'depth_loss_weight must be >= 0, got {depth_loss_weight}')
        self.depth_loss_weight = float(depth_loss_weight)
        self._last_depth: Optional[Tuple[Tensor, Tuple[int, int]]] = None

        mid = in_channels if depthnet_channels is None else depthnet_channels
        head: List[nn.Module] = []
        if mid > 0:
            head.append(ConvModule(in_channels, mid, 3, padding=1, norm_cfg=norm_cfg))
        head.append(nn.Conv2d(mid or in_channels, self.num_bins + out_channels, 1))
        self.depthnet = nn.Sequential(*head)

        self.downsample = nn.Identity()
        if downsample > 1:
            conv = dict(norm_cfg=norm_cfg, act_cfg=dict(type='ReLU'))
            # A k×k stride-k conv keeps cell centres aligned with the coarse grid.
            self.downsample = nn.Sequential(
                ConvModule(out_channels, out_channels, 3, padding=1, **conv),
                ConvModule(out_channels, out_channels, downsample, stride=downsample, **conv),
                ConvModule(out_channels, out_channels, 3, padding=1, **conv))

    @property
    def pc_range(self) -> Tuple[float, ...]:
        return self.grid.pc_range

    @property
    def bev_size(self) -> Tuple[int, int]:
        return self.grid.bev_h, self.grid.bev_w

    def create_frustum(self, img_hw: Sequence[int], feat_hw: Sequence[int],
                       device: torch.device = None) -> Tensor:
        """(fH, fW, D, 3) frustum ``(u, v, depth)`` in augmented-image pixels.

        Feature cell j covers pixels [j·s, (j+1)·s) with s = W / fW; its point sits at the
        cell centre in integer-pixel-centre coordinates, ``u = (j + 0.5)·s − 0.5``.
        """
        (img_h, img_w), (feat_h, feat_w) = img_hw, feat_hw
        us = (torch.arange(feat_w, device=device) + 0.5) * (img_w / feat_w) - 0.5
        vs = (torch.arange(feat_h, device=device) + 0.5) * (img_h / feat_h) - 0.5
        ds = self.depth_values.to(device)
        vv, uu, dd = torch.meshgrid(vs, us, ds, indexing='ij')
        return torch.stack((uu, vv, dd), dim=-1)

    def get_geometry(self, data_samples: Sequence, img_hw: Sequence[int],
                     feat_hw: Sequence[int], device: torch.device = None) -> Tensor:
        """(B, N, fH, fW, D, 3) LiDAR-frame coordinates of every frustum point.

        ``img_aug_matrix`` maps original pixels ``(u, v, d, 1)`` to augmented ones (2-D
        affine in ``[:2, :2]`` and ``[:2, 3]``, mmdet3d/BEVFusion layout); absent means
        identity. ``cam2img``/``lidar2cam`` are the original calibration. The matrices are
        inverted once per batch in float64 on the CPU (:func:`camera_matrices`); the points
        stay float32 under autocast.
        """
        inv_aug, img2lidar = camera_matrices(data_samples, torch.device(device or 'cpu'))
        frustum = self.create_frustum(img_hw, feat_hw, device)
        # u·d reaches ~5e4: autocast's fp16/bf16 einsum would move points by metres.
        with torch.autocast(device_type=frustum.device.type, enabled=False):
            pts = torch.cat((frustum, torch.ones_like(frustum[..., :1])), dim=-1)
            pts = torch.einsum('bnij,hwdj->bnhwdi', inv_aug[..., :3, :], pts)
            depth = pts[..., 2:3]
            pts = torch.cat((pts[..., :2] * depth, depth, torch.ones_like(depth)), dim=-1)
            return torch.einsum('bnij,bnhwdj->bnhwdi', img2lidar[..., :3, :], pts)

    def splat(self, depth: Tensor, feats: Tensor, geom: Tensor) -> Tensor:
        """Sum-pool depth-weighted features into the pooling grid.

        Args:
            depth: (B, N, D, fH, fW) depth distribution.
            feats: (B, N, C, fH, fW) context features.
            geom: (B, N, fH, fW, D, 3) from :meth:`get_geometry`.

        Returns:
            (B, C, h, w) on ``self.pool_grid``.
        """
        batch = depth.shape[0]
        grid = self.pool_grid
        flat_depth = depth.permute(0, 1, 3, 4, 2).reshape(-1, depth.shape[2])
        flat_feats = feats.permute(0, 1, 3, 4, 2).reshape(-1, feats.shape[2])
        cells, valid = grid.flat_index(geom.reshape(batch, -1, 3))
        offsets = torch.arange(batch, device=cells.device).unsqueeze(1) * grid.num_cells
        num_cells = batch * grid.num_cells
        # points outside the grid go to the extra cell num_cells, which the pool drops
        cell_idx = torch.where(valid, cells + offsets, num_cells).flatten()
        bev = depth_weighted_bev_pool(flat_depth, flat_feats, cell_idx, num_cells,
                                      self.pool_chunk_size)
        return bev.view(batch, grid.bev_h, grid.bev_w, -1).permute(0, 3, 1, 2).contiguous()

    def forward(self, img_feats: Tensor, data_samples: Sequence,
                img_hw: Sequence[int]) -> Tensor:
        """(B, N, C_in, fH, fW) image features of (H, W) = ``img_hw`` images →
        (B, out_channels, bev_h, bev_w)."""
        batch, num_cams = img_feats.shape[:2]
        feat_hw = img_feats.shape[-2:]
        x = self.depthnet(img_feats.flatten(0, 1))
        depth = x[:, :self.num_bins].softmax(dim=1)
        ctx = x[:, self.num_bins:]
        if self.depth_loss_weight > 0:
            self._last_depth = (depth, tuple(int(v) for v in img_hw))
        geom = self.get_geometry(data_samples, img_hw, feat_hw, img_feats.device)
        bev = self.splat(depth.reshape(batch, num_cams, *depth.shape[1:]),
                         ctx.reshape(batch, num_cams, *ctx.shape[1:]), geom)
        return self.downsample(bev)

    def depth_targets(self, points: Sequence[Tensor], data_samples: Sequence,
                      img_hw: Sequence[int], feat_hw: Sequence[int]) -> Tensor:
        """(B·N, fH, fW) depth-bin targets of ``points`` (LiDAR frame, one tensor per sample)
        with this module's calibration reading and candidates; -1 where there is none."""
        cam2img = stack_calib(data_samples, 'cam2img')
        lidar2cam = stack_calib(data_samples, 'lidar2cam')
        img_aug = stack_calib(data_samples, 'img_aug_matrix', required=False)
        if img_aug is None:
            img_aug = torch.eye(4, dtype=torch.float64).expand_as(cam2img)
        valid_hw = [_real_hw(sample, img_hw) for sample in data_samples]
        return depth_bin_targets(points, lidar2cam, cam2img, img_aug, feat_hw, img_hw,
                                 self.depth_bins, valid_hw)

    def depth_loss(self, points: Sequence[Tensor], data_samples: Sequence) -> Tensor:
        """``depth_loss_weight`` × BCE of the last forward's depth distribution against the
        LiDAR depth bins (see ``depth_targets.py``). The kept distribution is released."""
        if self._last_depth is None:
            raise RuntimeError('depth_loss needs a forward with depth_loss_weight > 0 first')
        depth, img_hw = self._last_depth
        self._last_depth = None
        targets = self.depth_targets(points, data_samples, img_hw, depth.shape[-2:])
        return self.depth_loss_weight * depth_bce_loss(depth, targets.to(depth.device))


def _real_hw(sample, img_hw: Sequence[int]) -> Tuple[int, int]:
    """The sample's unpadded image size (``img_shape``), at most ``img_hw``."""
    shape = sample.metainfo.get('img_shape')
    if shape is None:
        return int(img_hw[0]), int(img_hw[1])
    height, width = np.asarray(shape).reshape(-1)[:2]
    return min(int(height), int(img_hw[0])), min(int(width), int(img_hw[1]))
