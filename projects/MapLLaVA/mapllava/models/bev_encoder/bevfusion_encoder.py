"""Multi-view cameras (+ optional LiDAR) → one BEV feature map on the project's BEV grid."""
from typing import Dict, List, Optional, Sequence

import torch
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor

from .grid import DEFAULT_BEV_SIZE, DEFAULT_PC_RANGE, BEVGrid, resample_bev


def _build(cfg: Optional[dict]) -> Optional[torch.nn.Module]:
    return MODELS.build(cfg) if cfg is not None else None


@MODELS.register_module()
class BEVFusionEncoder(BaseModule):
    """BEVFusion-style BEV encoder (camera LSS branch, optional LiDAR branch, optional fuser).

    The output grid is ``bev_size`` over ``pc_range`` with the convention of ``grid.py``
    (row 0 at y_min, column 0 at x_min). The LiDAR BEV map, whatever its resolution, is
    resampled onto that grid from ``pts_bev_range`` (the voxeliser's point_cloud_range xy).

    Args:
        img_backbone: image backbone cfg (e.g. ``mmdet.ResNet``, ``mmdet.SwinTransformer``).
        img_neck: image neck cfg (``LSSFPN``, ``mmdet.FPN``); its outputs, or the backbone's,
            are indexed with ``img_feat_level`` when they are a sequence.
        view_transform: ``LSSViewTransform`` cfg; ``pc_range``/``bev_size`` default to ours.
        pts_voxel_encoder: e.g. ``PillarFeatureNet`` (voxels from ``Det3DDataPreprocessor``).
        pts_middle_encoder: ``PointPillarsScatter`` (CPU) or ``SparseEncoder`` (CUDA).
        pts_backbone: optional, e.g. ``SECOND``.
        pts_neck: optional, e.g. ``SECONDFPN``; a sequence output is reduced to its first map.
        fuser: e.g. ``ConvFuser``; required when both branches exist.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) of the BEV grid.
        bev_size: (bev_h, bev_w) of the output.
        pts_bev_range: (x_min, y_min, x_max, y_max) covered by the LiDAR BEV map
            (default: ``pc_range``'s xy).
        pts_out_channels: channels of the LiDAR BEV map; only needed without camera/fuser,
            to set ``out_channels``.
        img_feat_level: which neck/backbone output the view transform lifts.
        channels_last: run the image backbone and neck in channels-last memory format.
        with_cp: if not None, passed to the image backbone as ``with_cp`` (checkpointing).
    """

    def __init__(self,
                 img_backbone: Optional[dict] = None,
                 img_neck: Optional[dict] = None,
                 view_transform: Optional[dict] = None,
                 pts_voxel_encoder: Optional[dict] = None,
                 pts_middle_encoder: Optional[dict] = None,
                 pts_backbone: Optional[dict] = None,
                 pts_neck: Optional[dict] = None,
                 fuser: Optional[dict] = None,
                 pc_range: Sequence[float] = DEFAULT_PC_RANGE,
                 bev_size: Sequence[int] = DEFAULT_BEV_SIZE,
                 pts_bev_range: Optional[Sequence[float]] = None,
                 pts_out_channels: Optional[int] = None,
                 img_feat_level: int = 0,
                 channels_last: bool = False,
                 with_cp: Optional[bool] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.grid = BEVGrid(pc_range, bev_size)
        self.img_feat_level = img_feat_level
        self.channels_last = channels_last

        if (img_backbone is None) != (view_transform is None):
            raise ValueError('img_backbone and view_transform come together')
        if img_backbone is not None and with_cp is not None:
            img_backbone = dict(img_backbone, with_cp=with_cp)
        self.img_backbone = _build(img_backbone)
        self.img_neck = _build(img_neck)
        self.view_transform = None
        if view_transform is not None:
            view_transform = dict(view_transform)
            view_transform.setdefault('pc_range', self.grid.pc_range)
            view_transform.setdefault('bev_size', (self.grid.bev_h, self.grid.bev_w))
            self.view_transform = MODELS.build(view_transform)
            if (tuple(self.view_transform.pc_range) != self.grid.pc_range
                    or tuple(self.view_transform.bev_size) != (self.grid.bev_h,
                                                               self.grid.bev_w)):
                raise ValueError('view_transform pc_range/bev_size differ from the encoder')
        if channels_last and self.img_backbone is not None:
            self.img_backbone.to(memory_format=torch.channels_last)
            if self.img_neck is not None:
                self.img_neck.to(memory_format=torch.channels_last)

        if (pts_voxel_encoder is None) != (pts_middle_encoder is None):
            raise ValueError('pts_voxel_encoder and pts_middle_encoder come together')
        self.pts_voxel_encoder = _build(pts_voxel_encoder)
        self.pts_middle_encoder = _build(pts_middle_encoder)
        self.pts_backbone = _build(pts_backbone)
        self.pts_neck = _build(pts_neck)
        self.pts_bev_range = tuple(
            float(v) for v in (pts_bev_range if pts_bev_range is not None
                               else self.grid.xy_range))
        if len(self.pts_bev_range) != 4:
            raise ValueError(f'pts_bev_range needs 4 values, got {pts_bev_range}')

        self.fuser = _build(fuser)
        if self.with_cam and self.with_pts and self.fuser is None:
            raise ValueError('a camera + LiDAR encoder needs a fuser')
        if self.fuser is not None:
            self.out_channels = self.fuser.out_channels
        elif self.with_cam:
            self.out_channels = self.view_transform.out_channels
        elif self.with_pts and pts_out_channels is not None:
            self.out_channels = pts_out_channels
        else:
            raise ValueError('set pts_out_channels for a LiDAR-only encoder')

    @property
    def with_cam(self) -> bool:
        return self.img_backbone is not None

    @property
    def with_pts(self) -> bool:
        return self.pts_voxel_encoder is not None

    @property
    def with_depth_loss(self) -> bool:
        """Whether the camera branch's depth net is supervised by LiDAR points."""
        return self.with_cam and getattr(self.view_transform, 'depth_loss_weight', 0) > 0

    def depth_loss(self, points: Optional[Sequence[Tensor]],
                   data_samples: Sequence) -> Dict[str, Tensor]:
        """``loss_depth`` of the last forward's depth distribution against the LiDAR points
        (per sample, LiDAR frame). Raises without points: a weight > 0 that silently trained
        nothing would be a wrong experiment."""
        if points is None or len(points) != len(data_samples):
            raise ValueError(
                'model.bev_encoder.view_transform.depth_loss_weight > 0 needs the LiDAR points '
                "of every training sample: add dict(type='LoadPointsFromFile', "
                "coord_type='LIDAR', load_dim=5, use_dim=5) to the train pipeline "
                '(PackMapInputs packs inputs["points"]), or set depth_loss_weight=0')
        return dict(loss_depth=self.view_transform.depth_loss(points, data_samples))

    def extract_img_feats(self, imgs: Tensor) -> Tensor:
        """(B, N, 3, H, W) images → (B, N, C_img, fH, fW) features the view transform lifts."""
        batch, num_cams = imgs.shape[:2]
        x = imgs.flatten(0, 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.img_backbone(x)
        if self.img_neck is not None:
            x = self.img_neck(x)
        if isinstance(x, (list, tuple)):
            x = x[self.img_feat_level]
        return x.reshape(batch, num_cams, *x.shape[1:])

    def extract_cam_bev(self, imgs: Tensor, data_samples: Sequence) -> Tensor:
        """(B, N, 3, H, W) images → (B, C_cam, bev_h, bev_w)."""
        return self.view_transform(self.extract_img_feats(imgs), data_samples,
                                   imgs.shape[-2:])

    def extract_pts_bev(self, voxel_dict: Dict[str, Tensor], batch_size: int) -> Tensor:
        """``Det3DDataPreprocessor.voxelize`` output → (B, C_pts, bev_h, bev_w).

        Hard voxels (``voxels``, ``num_points``, ``coors``) feed ``PillarFeatureNet``-like
        encoders; without ``num_points`` (dynamic voxelisation) the encoder gets
        ``(voxels, coors)`` and may return ``(features, coors)``.
        """
        coors = voxel_dict['coors']
        if 'num_points' in voxel_dict:
            x = self.pts_voxel_encoder(voxel_dict['voxels'], voxel_dict['num_points'], coors)
        else:
            x = self.pts_voxel_encoder(voxel_dict['voxels'], coors)
        if isinstance(x, tuple):
            x, coors = x
        x = self.pts_middle_encoder(x, coors, batch_size)
        if self.pts_backbone is not None:
            x = self.pts_backbone(x)
        if self.pts_neck is not None:
            x = self.pts_neck(x)
        if isinstance(x, (list, tuple)):
            x = x[0]
        return resample_bev(x, self.pts_bev_range, self.grid)

    def feature_channels(self, name: str) -> int:
        """Channels of :meth:`encode`'s output ``name``; a clear error when the branch that
        makes it is not configured (a consumer asking for it is a config mistake)."""
        if name in ('img_feats', 'camera_bev') and not self.with_cam:
            raise ValueError(f'{name!r} needs the camera branch; the BEV encoder has no '
                             'img_backbone / view_transform')
        if name == 'lidar_bev' and not self.with_pts:
            raise ValueError("'lidar_bev' needs the LiDAR branch; the BEV encoder has no "
                             'pts_voxel_encoder / pts_middle_encoder (see '
                             'configs/mapllava/mapllava_tiny-lidar_1xb4-demo_synthetic-nus-map.py)')
        if name == 'img_feats':
            return self.view_transform.in_channels
        if name == 'camera_bev':
            return self.view_transform.out_channels
        if name == 'lidar_bev':
            if self.fuser is not None:
                return self.fuser.in_channels[-1]
            return self.out_channels
        if name == 'bev':
            return self.out_channels
        raise KeyError(f'unknown encoder output {name!r}; known: img_feats, camera_bev, '
                       'lidar_bev, bev')

    def encode(self, imgs: Optional[Tensor], data_samples: Sequence,
               voxel_dict: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        """Every intermediate a consumer may read, from one pass (``forward`` with
        ``return_all=True``, so forward hooks and compiled forwards see the call).

        ``bev``: the output map (fused with LiDAR when there is a fuser), which the map head
        reads; ``camera_bev`` / ``lidar_bev``: each branch's map on the output grid before
        fusion; ``img_feats``: ``(B, N, C_img, fH, fW)`` perspective features of the
        ``img_hw`` (padded) images, which the camera BEV was lifted from.
        """
        return self(imgs, data_samples, voxel_dict=voxel_dict, return_all=True)

    def forward(self, imgs: Optional[Tensor], data_samples: Sequence,
                voxel_dict: Optional[Dict[str, Tensor]] = None,
                return_all: bool = False) -> Tensor | Dict[str, Tensor]:
        """Images (B, N, 3, H, W) and/or voxels → (B, out_channels, bev_h, bev_w), or with
        ``return_all`` the dict of :meth:`encode`."""
        out: Dict[str, Tensor] = {}
        feats: List[Tensor] = []
        if self.with_cam:
            if imgs is None:
                raise ValueError('this encoder has a camera branch but got no images')
            out['img_feats'] = self.extract_img_feats(imgs)
            out['img_hw'] = tuple(imgs.shape[-2:])
            out['camera_bev'] = self.view_transform(out['img_feats'], data_samples,
                                                    out['img_hw'])
            feats.append(out['camera_bev'])
        if self.with_pts:
            if voxel_dict is None:
                raise ValueError('this encoder has a LiDAR branch but got no voxel_dict')
            out['lidar_bev'] = self.extract_pts_bev(voxel_dict, len(data_samples))
            feats.append(out['lidar_bev'])
        out['bev'] = self.fuser(feats) if self.fuser is not None else feats[0]
        return out if return_all else out['bev']

