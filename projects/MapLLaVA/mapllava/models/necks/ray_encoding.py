"""Where each perspective image token looks: its viewing ray in the LiDAR frame, encoded.

The Q-Former reads image tokens of six cameras at once; without geometry it could not tell
where in the scene a token's content lies. Each token gets the ray through its pixel (camera
centre and direction, from the same calibration the LSS view transform lifts with), so image
and BEV tokens share one metric frame (the idea of PETR's 3-D position embedding).
"""
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..bev_encoder.lss_view_transform import camera_matrices


def token_pixel_centres(img_hw: Sequence[int], grid_hw: Sequence[int],
                        device: torch.device | None = None) -> Tensor:
    """``(gH, gW, 2)`` ``(u, v)`` pixel centres of a ``grid_hw`` token grid over an ``img_hw``
    image: cell j covers pixels ``[j·s, (j+1)·s)`` with ``s = W / gW``, its centre is
    ``(j + 0.5)·s − 0.5`` (the convention of ``LSSViewTransform.create_frustum``)."""
    (img_h, img_w), (grid_h, grid_w) = img_hw, grid_hw
    us = (torch.arange(grid_w, device=device) + 0.5) * (img_w / grid_w) - 0.5
    vs = (torch.arange(grid_h, device=device) + 0.5) * (img_h / grid_h) - 0.5
    vv, uu = torch.meshgrid(vs, us, indexing='ij')
    return torch.stack((uu, vv), dim=-1)


def viewing_rays(data_samples: Sequence, img_hw: Sequence[int], grid_hw: Sequence[int],
                 device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Camera centres ``(B, N, 3)`` and ray directions ``(B, N, gH, gW, 3)``, LiDAR frame.

    The point at camera depth ``d`` on the ray of a token is ``origin + d · direction``: the
    view transform maps the augmented pixel ``(u, v)`` at depth ``d`` to
    ``img2lidar · (u'·d, v'·d, d, 1)`` with ``(u', v')`` the original pixel
    (``inverse(img_aug_matrix)``, whose 2-D affine leaves depth alone), i.e. to
    ``d · img2lidar[:3, :3] · (u', v', 1) + img2lidar[:3, 3]``. The directions are therefore
    not unit vectors: their camera-frame z is 1.
    """
    device = torch.device(device or 'cpu')
    inv_aug, img2lidar = camera_matrices(data_samples, device)
    centres = token_pixel_centres(img_hw, grid_hw, device)
    with torch.autocast(device_type=device.type, enabled=False):
        pix = torch.cat((centres, torch.ones_like(centres)), dim=-1)  # (u, v, d=1, 1)
        orig_pix = torch.einsum('bnij,hwj->bnhwi', inv_aug[..., :3, :], pix)
        cam_dirs = torch.cat((orig_pix[..., :2] / orig_pix[..., 2:3],
                              torch.ones_like(orig_pix[..., 2:3])), dim=-1)
        directions = torch.einsum('bnij,bnhwj->bnhwi', img2lidar[..., :3, :3], cam_dirs)
        return img2lidar[..., :3, 3], directions


class RayPositionEncoding(nn.Module):
    """``(origin, direction)`` of a ray → an ``embed_dims`` position encoding (2-layer MLP).

    The origin is scaled by the half extents of ``pc_range`` (so the ROI spans [-1, 1]) and
    the direction normalised to a unit vector: both are then O(1) whatever the rig.
    """

    def __init__(self, embed_dims: int, pc_range: Sequence[float]) -> None:
        super().__init__()
        lo, hi = torch.tensor(pc_range[:3]), torch.tensor(pc_range[3:6])
        self.register_buffer('centre', (lo + hi) / 2, persistent=False)
        self.register_buffer('half_extent', (hi - lo) / 2, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(6, embed_dims), nn.ReLU(inplace=True),
                                 nn.Linear(embed_dims, embed_dims))

    def forward(self, origins: Tensor, directions: Tensor) -> Tensor:
        """``(B, N, 3)`` origins, ``(B, N, gH, gW, 3)`` directions → ``(B, N, gH, gW, D)``."""
        origin = (origins - self.centre) / self.half_extent
        origin = origin[:, :, None, None].expand_as(directions)
        unit = nn.functional.normalize(directions, dim=-1)
        feats = torch.cat((origin, unit), dim=-1).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)
