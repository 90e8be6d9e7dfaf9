"""LiDAR depth targets and loss for the LSS depth net (BEVDepth-style depth supervision).

The depth net's softmax over the candidates ``torch.arange(*depth_bins)`` is otherwise learnt
only through the BEV losses; projecting the LiDAR keyframe into every (augmented) view gives
it a direct target. The projection is the inverse of ``LSSViewTransform.get_geometry``:
``(u·d, v·d, d) = cam2img @ lidar2cam @ point``, then ``(u', v', d') = img_aug_matrix @ (u, v,
d, 1)``; feature cell ``j`` covers augmented pixels ``[j·s − 0.5, (j+1)·s − 0.5)`` with
``s = W / fW`` (integer pixel centres, as ``create_frustum``).
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_CAM_DEPTH = 1e-3  # metres; points at or behind the image plane never reach a pixel


def project_points(points: Tensor, lidar2img: Tensor, img_aug: Tensor) -> Tuple[Tensor, Tensor]:
    """Augmented-image ``(u, v, depth)`` of LiDAR points in every view.

    Args:
        points: (P, >=3) LiDAR-frame points (extra columns such as intensity are ignored).
        lidar2img: (N, 4, 4) ``cam2img @ lidar2cam`` of the original images.
        img_aug: (N, 4, 4) original pixel → augmented pixel.

    Returns:
        (N, P, 3) ``(u, v, depth)`` and an (N, P) mask of points in front of the camera.
    """
    xyz1 = torch.cat((points[:, :3].float(), points.new_ones(len(points), 1).float()), dim=1)
    cam = torch.einsum('nij,pj->npi', lidar2img[:, :3], xyz1)
    in_front = cam[..., 2] > MIN_CAM_DEPTH
    uv = cam[..., :2] / cam[..., 2:3].clamp(min=MIN_CAM_DEPTH)
    uvd1 = torch.cat((uv, cam[..., 2:3], torch.ones_like(uv[..., :1])), dim=-1)
    return torch.einsum('nij,npj->npi', img_aug[:, :3], uvd1), in_front


def cell_index(uvd: Tensor, feat_hw: Sequence[int], img_hw: Sequence[int],
               valid_hw: Optional[Sequence[int]] = None) -> Tuple[Tensor, Tensor]:
    """Flat feature-cell index ``row·fW + col`` of each projected point, and whether it is in
    the image (``valid_hw``, default ``img_hw``: the padded batch size sets the stride, the
    real image size bounds the pixels so zero padding gets no target)."""
    (feat_h, feat_w), (img_h, img_w) = feat_hw, img_hw
    valid_h, valid_w = valid_hw if valid_hw is not None else img_hw
    u, v = uvd[..., 0], uvd[..., 1]
    inside = (u >= -0.5) & (u < valid_w - 0.5) & (v >= -0.5) & (v < valid_h - 0.5)
    col = torch.floor((u + 0.5) * (feat_w / img_w)).clamp(0, feat_w - 1).long()
    row = torch.floor((v + 0.5) * (feat_h / img_h)).clamp(0, feat_h - 1).long()
    return row * feat_w + col, inside


def depth_to_bins(depth: Tensor, depth_bins: Sequence[float]) -> Tensor:
    """Index of the nearest candidate of ``torch.arange(*depth_bins)`` (the depth the frustum
    puts the point at); -1 for no depth (inf) or beyond half a step outside the candidates."""
    start, stop, step = (float(v) for v in depth_bins)
    num_bins = len(torch.arange(start, stop, step))
    idx = torch.floor((depth - start) / step + 0.5)
    valid = torch.isfinite(idx) & (idx >= 0) & (idx < num_bins)
    return torch.where(valid, idx, torch.full_like(idx, -1.0)).long()


def depth_bin_targets(points: Sequence[Tensor], lidar2cam: Tensor, cam2img: Tensor,
                      img_aug: Tensor, feat_hw: Sequence[int], img_hw: Sequence[int],
                      depth_bins: Sequence[float],
                      valid_hw: Optional[Sequence[Sequence[int]]] = None) -> Tensor:
    """(B·N_cam, fH, fW) long depth-bin targets, -1 where no LiDAR point gives one.

    Each cell takes the nearest point that projects into it (what the camera sees; a nearer
    occluder outside the bin range leaves the cell without target, as in BEVDepth).

    Args:
        points: per sample, (P_b, >=3) LiDAR-frame points.
        lidar2cam, cam2img, img_aug: (B, N_cam, 4, 4), as the view transform reads them.
        feat_hw: (fH, fW) of the depth net output.
        img_hw: (H, W) of the (padded) image batch the features come from.
        depth_bins: (start, stop, step) of the depth candidates.
        valid_hw: per sample, the real (H, W) of its images (default ``img_hw``).
    """
    batch, num_cams = lidar2cam.shape[:2]
    feat_h, feat_w = feat_hw
    device = points[0].device if len(points) else lidar2cam.device
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        lidar2img = (cam2img.double() @ lidar2cam.double()).to(device, torch.float32)
        img_aug = img_aug.to(device, torch.float32)
        min_depth = torch.full((batch * num_cams * feat_h * feat_w, ), float('inf'),
                               device=device)
        for b, pts in enumerate(points):
            uvd, in_front = project_points(pts.to(device), lidar2img[b], img_aug[b])
            cells, inside = cell_index(uvd, feat_hw, img_hw,
                                       valid_hw[b] if valid_hw is not None else None)
            cam_offset = (b * num_cams + torch.arange(num_cams, device=device)) * feat_h * feat_w
            keep = in_front & inside
            min_depth.scatter_reduce_(0, (cells + cam_offset[:, None])[keep], uvd[..., 2][keep],
                                      reduce='amin')
    return depth_to_bins(min_depth, depth_bins).view(batch * num_cams, feat_h, feat_w)


def depth_bce_loss(depth: Tensor, targets: Tensor) -> Tensor:
    """Binary cross entropy of the depth softmax against the one-hot target bin, summed over
    the bins and averaged over the cells that have a target (BEVDepth's depth loss).

    Args:
        depth: (M, D, fH, fW) depth distribution (softmax over D).
        targets: (M, fH, fW) bin indices, -1 for no target.
    """
    mask = targets >= 0
    with torch.autocast(device_type=depth.device.type, enabled=False):
        probs = depth.permute(0, 2, 3, 1)[mask].float()
        onehot = F.one_hot(targets[mask], depth.shape[1]).float()
        loss = F.binary_cross_entropy(probs, onehot, reduction='sum')
    return loss / mask.sum().clamp(min=1)
