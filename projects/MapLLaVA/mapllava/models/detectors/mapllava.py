"""MapLLaVA detector: cameras -> BEV -> Q-Former scene tokens -> LLM -> map queries -> polylines."""
from __future__ import annotations

from typing import Optional

import torch
from mmdet3d.models.detectors import Base3DDetector
from mmdet3d.registry import MODELS
from mmdet3d.structures.det3d_data_sample import SampleList
from torch import Tensor

from ..necks.modalities import encoder_output, resolve_modalities

#: how deep the answer loss trains: every part (``'encoder'``), or it stops before the BEV
#: encoder (``'neck'``) or before the Q-Former (``'bridge'``)
LM_GRADIENT_INTO = ('encoder', 'neck', 'bridge')


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
        lm_gradient_into: the deepest part the answer loss (``loss_lm``) trains:
            ``'encoder'`` (all of them), ``'neck'`` (the Q-Former and the bridge) or
            ``'bridge'`` (the LLM bridge alone). Below that only the map losses train, so
            the BEV map the map head reads is shaped by the map alone. The map queries are
            then read from text-free rows of their own over the scene tokens with
            gradients, and the question rows read a copy whose graph stops there (for
            ``'neck'`` the Q-Former runs again on the detached encoder features, with a
            dropout draw of its own in training), at the cost of one more LLM row per
            sample. ``lm_loss_weight=0`` builds no text rows, so then it changes nothing.
    """

    def __init__(self,
                 bev_encoder: dict,
                 neck: dict,
                 bridge: dict,
                 map_head: dict,
                 data_preprocessor: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 lm_gradient_into: str = 'encoder') -> None:
        if lm_gradient_into not in LM_GRADIENT_INTO:
            raise ValueError(f'model.lm_gradient_into must be one of {LM_GRADIENT_INTO}, '
                             f'got {lm_gradient_into!r}')
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.lm_gradient_into = lm_gradient_into
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

    def _scene(self, batch_inputs_dict: dict,
               batch_data_samples: SampleList) -> tuple[Tensor, Tensor]:
        """BEV map and the Q-Former's scene tokens.

        The map head always reads the encoder's output BEV map; the neck reads whichever of
        the encoder's features its ``modalities`` name.
        """
        feats, scene = self._features(batch_inputs_dict, batch_data_samples)
        return feats['bev'], scene

    def _features(self, batch_inputs_dict: dict,
                  batch_data_samples: SampleList) -> tuple[dict, Tensor]:
        """Every output of the BEV encoder (``BEVFusionEncoder.encode``) and the scene
        tokens: ``loss`` may run the neck again on the encoder's outputs."""
        feats = self.bev_encoder.encode(batch_inputs_dict.get('imgs'), batch_data_samples,
                                        voxel_dict=batch_inputs_dict.get('voxels'))
        return feats, self.neck(feats, batch_data_samples)

    def scene_tokens(self, batch_inputs_dict: dict, batch_data_samples: SampleList) -> Tensor:
        """``(B, T, D_q)`` scene tokens, all the LLM sees of the scene (for read-out probes)."""
        return self._scene(batch_inputs_dict, batch_data_samples)[1]

    def _decode_inputs(self, batch_inputs_dict: dict,
                       batch_data_samples: SampleList) -> tuple[Tensor, Tensor]:
        """BEV map and the ``(B, num_vec, D)`` instance queries the LLM bridge reads out."""
        bev, scene = self._scene(batch_inputs_dict, batch_data_samples)
        return bev, self.bridge(scene)

    @property
    def with_lm_loss(self) -> bool:
        """Whether training also scores answers to map questions (``bridge.lm_loss_weight``)."""
        return getattr(self.bridge, 'lm_loss_weight', 0) > 0

    @property
    def can_answer(self) -> bool:
        """Whether the bridge can put the scene into words (an LLM, not the bypass)."""
        return hasattr(self.bridge, 'generate')

    def loss(self, batch_inputs_dict: dict, batch_data_samples: SampleList,
             **kwargs) -> dict[str, Tensor]:
        """Losses of every decoder layer against ``gt_instances_3d`` (see ``MapTRHead``), plus
        ``loss_depth`` from ``inputs['points']`` when the encoder's depth loss is on, plus
        ``loss_lm`` (the answer's next-token loss) when ``bridge.lm_loss_weight > 0``.

        One forward gives both outputs: the LLM reads ``[prompt, scene, map queries,
        question, answer]`` and the map queries, before the text, are causal-masked from it.
        Every pair a sample carries (``LoadMapQuestions(num_questions=K)`` draws ``K``) is a
        sequence of its own over that sample's scene; a sample without one adds nothing to
        ``loss_lm``.
        """
        feats, scene = self._features(batch_inputs_dict, batch_data_samples)
        bev = feats['bev']
        lm_losses = {}
        if self.with_lm_loss:
            questions, answers, rows = [], [], []
            for b, sample in enumerate(batch_data_samples):
                qs = sample.metainfo.get('questions') or []
                ans = sample.metainfo.get('answers') or []
                if len(qs) != len(ans):
                    raise ValueError(f'sample {sample.metainfo.get("token")!r} has {len(qs)} '
                                     f'questions but {len(ans)} answers: train with '
                                     "LoadMapQuestions(mode='sample') in the pipeline")
                pairs = list(zip(qs, ans)) or [(None, None)]
                questions += [q for q, _ in pairs]
                answers += [a for _, a in pairs]
                rows += [b] * len(pairs)
            if self.lm_gradient_into == 'encoder':
                queries, lm_losses = self.bridge.forward_with_text(scene, questions, answers,
                                                                   rows=rows)
            else:
                queries, lm_losses = self._text_rows_detached(
                    feats, scene, batch_data_samples, questions, answers, rows)
        else:
            queries = self.bridge(scene)
        losses = self.map_head.loss(bev, queries, batch_data_samples)
        losses.update(lm_losses)
        if getattr(self.bev_encoder, 'with_depth_loss', False):
            losses.update(self.bev_encoder.depth_loss(batch_inputs_dict.get('points'),
                                                      batch_data_samples))
        return losses

    def _text_rows_detached(self, feats: dict, scene: Tensor, batch_data_samples: SampleList,
                            questions: list, answers: list,
                            rows: list) -> tuple[Tensor, dict[str, Tensor]]:
        """Map queries from ``scene`` and the answer loss from a copy whose graph stops at
        ``lm_gradient_into``: one bridge call over both, ``[B map rows, question rows]``."""
        if self.lm_gradient_into == 'neck':
            detached = {k: v.detach() if isinstance(v, Tensor) else v for k, v in feats.items()}
            text_scene = self.neck(detached, batch_data_samples)
        else:
            text_scene = scene.detach()
        batch = scene.shape[0]
        out, lm_losses = self.bridge.forward_with_text(
            torch.cat([scene, text_scene]), [None] * batch + questions,
            [None] * batch + answers, rows=list(range(batch)) + [batch + r for r in rows])
        return out[:batch], lm_losses

    def predict(self, batch_inputs_dict: dict, batch_data_samples: SampleList,
                **kwargs) -> SampleList:
        """Set ``pred_instances_3d`` (polylines in metres, LiDAR frame; scores; labels) on
        every sample and return the samples, as mmengine's evaluators expect.

        Samples whose metainfo has ``questions`` also get ``pred_answers``:
        ``[dict(type, question, answer)]`` generated from the same scene tokens (``type`` from
        ``qa_types`` when the pipeline gave it). A bridge without an LLM sets none.
        """
        bev, scene = self._scene(batch_inputs_dict, batch_data_samples)
        results = self.map_head.predict(bev, self.bridge(scene), batch_data_samples)
        samples = self.add_pred_to_datasample(batch_data_samples, results)
        if self.can_answer:
            self._answer(scene, samples)
        return samples

    def _answer(self, scene: Tensor, samples: SampleList) -> None:
        """Generate the answer to every question of every sample (one LLM row per question)."""
        rows, questions = [], []
        for index, sample in enumerate(samples):
            for question in sample.metainfo.get('questions') or []:
                rows.append(index)
                questions.append(question)
        if not questions:
            return
        texts = self.bridge.generate(scene[torch.tensor(rows, device=scene.device)], questions)
        answers = iter(texts)
        for sample in samples:
            asked = sample.metainfo.get('questions') or []
            if not asked:
                continue
            types = sample.metainfo.get('qa_types') or [None] * len(asked)
            sample.pred_answers = [dict(type=t, question=q, answer=next(answers))
                                   for t, q in zip(types, asked)]

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
