"""MapLLaVA detector: cameras -> BEV -> Q-Former scene tokens -> LLM -> map queries -> polylines."""
from __future__ import annotations

from typing import Optional

from mmdet3d.models.detectors import Base3DDetector
from mmdet3d.registry import MODELS
from mmdet3d.structures.det3d_data_sample import SampleList
from torch import Tensor

from ..necks.modalities import encoder_output, resolve_modalities


def with_encoder_modalities(neck: dict, bev_encoder) -> dict:
    """The neck config with each modality's channels (and the image rays' ``pc_range``)
    taken from the built BEV encoder.

    A modality the encoder cannot produce (e.g. ``lidar`` without a LiDAR branch), or
    channels that disagree with it, fail here, when the model is built, instead of the
    Q-Former silently reading zeros or crashing in the first forward.
    """
    if 'modalities' not in neck or not hasattr(bev_encoder, 'feature_channels'):
        return neck
    bev_defaults = dict(in_channels=neck.get('in_channels'), downsample=neck.get('downsample'),
                        mode=neck.get('downsample_mode'))
    resolved = resolve_modalities(neck['modalities'], bev_defaults)
    modalities = {}
    for name, opts in resolved.items():
        try:
            channels = bev_encoder.feature_channels(encoder_output(name, opts))
        except ValueError as err:
            raise ValueError(f'model.neck.modalities.{name} is switched on, but {err}') from None
        if opts['in_channels'] not in (None, channels):
            raise ValueError(f'model.neck.modalities.{name}.in_channels is '
                             f'{opts["in_channels"]}, but the BEV encoder gives {channels} '
                             f'channels for it')
        opts = dict(opts, in_channels=channels)
        if name == 'image' and opts['pc_range'] is None:
            opts['pc_range'] = tuple(bev_encoder.grid.pc_range)
        modalities[name] = opts
    return dict(neck, modalities=modalities)


@MODELS.register_module()
class MapLLaVA(Base3DDetector):
    """Online vector-map detector with an LLM between the BEV encoder and the map decoder.

    Every part is built from its config with ``MODELS.build``, so encoder, neck, bridge
    (frozen / LoRA / full LLM or a bypass) and head can be swapped without code changes.
    The ``data_preprocessor`` (``Det3DDataPreprocessor``) normalizes and stacks the
    multi-view images to ``inputs['imgs'] (B, N_cam, 3, H, W)`` and optionally voxelizes
    LiDAR points into ``inputs['voxels']``.

    Args:
        bev_encoder: e.g. ``BEVFusionEncoder``: ``(imgs, data_samples, voxel_dict) -> BEV``.
        neck: e.g. ``QFormerNeck``: ``BEV (B, C, H, W) -> scene tokens (B, T, D_q)``.
        bridge: e.g. ``LLMBridge`` / ``BypassBridge``: ``scene tokens -> (B, num_vec, D)``.
        map_head: e.g. ``MapTRHead``.
        data_preprocessor: e.g. ``Det3DDataPreprocessor`` with ``mean``/``std``.
    """

    def __init__(self,
                 bev_encoder: dict,
                 neck: dict,
                 bridge: dict,
                 map_head: dict,
                 data_preprocessor: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.bev_encoder = MODELS.build(bev_encoder)
        self.neck = MODELS.build(with_encoder_modalities(neck, self.bev_encoder))
        self.bridge = MODELS.build(bridge)
        self.map_head = MODELS.build(map_head)
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg

    def extract_feat(self, batch_inputs_dict: dict, batch_data_samples: SampleList) -> Tensor:
        """BEV map ``(B, C, bev_h, bev_w)`` from the preprocessed images (and voxels)."""
        return self.bev_encoder(batch_inputs_dict.get('imgs'), batch_data_samples,
                                voxel_dict=batch_inputs_dict.get('voxels'))

    def _decode_inputs(self, batch_inputs_dict: dict,
                       batch_data_samples: SampleList) -> tuple[Tensor, Tensor]:
        """BEV map and the ``(B, num_vec, D)`` instance queries the LLM bridge reads out.

        The map head always reads the encoder's output BEV map; the neck reads whichever of
        the encoder's features its ``modalities`` name.
        """
        feats = self.bev_encoder.encode(batch_inputs_dict.get('imgs'), batch_data_samples,
                                        voxel_dict=batch_inputs_dict.get('voxels'))
        return feats['bev'], self.bridge(self.neck(feats, batch_data_samples))

    def loss(self, batch_inputs_dict: dict, batch_data_samples: SampleList,
             **kwargs) -> dict[str, Tensor]:
        """Losses of every decoder layer against ``gt_instances_3d`` (see ``MapTRHead``), plus
        ``loss_depth`` from ``inputs['points']`` when the encoder's depth loss is on."""
        bev, queries = self._decode_inputs(batch_inputs_dict, batch_data_samples)
        losses = self.map_head.loss(bev, queries, batch_data_samples)
        if getattr(self.bev_encoder, 'with_depth_loss', False):
            losses.update(self.bev_encoder.depth_loss(batch_inputs_dict.get('points'),
                                                      batch_data_samples))
        return losses

    def predict(self, batch_inputs_dict: dict, batch_data_samples: SampleList,
                **kwargs) -> SampleList:
        """Set ``pred_instances_3d`` (polylines in metres, LiDAR frame; scores; labels) on
        every sample and return the samples, as mmengine's evaluators expect."""
        bev, queries = self._decode_inputs(batch_inputs_dict, batch_data_samples)
        results = self.map_head.predict(bev, queries, batch_data_samples)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(self, batch_inputs_dict: dict,
                 batch_data_samples: Optional[SampleList] = None,
                 **kwargs) -> dict[str, Tensor]:
        """Raw last-layer outputs: ``pred_logits (B, num_vec, C)`` and ``pred_points
        (B, num_vec, num_pts, 2)`` in metres in the LiDAR frame (not normalized).

        The samples are still needed: the BEV encoder reads the camera calibration from them.
        """
        bev, queries = self._decode_inputs(batch_inputs_dict, batch_data_samples)
        preds = self.map_head(bev, queries)
        return dict(pred_logits=preds['cls_scores'][-1],
                    pred_points=self.map_head.denormalize(preds['pts_preds'][-1]))
