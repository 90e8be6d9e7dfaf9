"""Load a MapLLaVA checkpoint once and answer single-sample requests: the engine behind
``tools/chat.py`` and ``tools/serve.py``.

mmdet3d's ``init_model`` / ``inference_multi_modality_detector`` assume its own pipelines
(LiDAR files, box structures); here a sample is what the config's own test pipeline makes of
an info entry (a dataset token) or of six uploaded images with their calibration, and the
checkpoint is loaded as ``tools/test.py`` loads it (``weights_only`` unpickling, every key
checked against the model by ``check_state_dict``).

Questions follow the detector's contract: ``questions`` (list of str) in each sample's
metainfo before ``test_step``; a model with a language path returns ``pred_answers``
(``[dict(question, answer)]``) on the sample. A model without one returns none, and
:class:`NoLanguagePathError` says so rather than inventing an answer.
"""
from __future__ import annotations

import copy
import os.path as osp
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from mmdet3d.registry import DATASETS, MODELS
from mmdet3d.structures import Det3DDataSample
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint

from ..engine import cli
from ..engine.config_checks import ConfigCheckError, check_ann_files, check_pretrained
from ..engine.map_runner import check_state_dict
from .camera_inputs import InputError, camera_results

NO_LANGUAGE_MESSAGE = 'this model does not answer questions (its bridge has no language path)'
NUSCENES_CAMERAS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK',
                    'CAM_BACK_LEFT', 'CAM_BACK_RIGHT')
# steps an upload replaces (the images) or cannot have (GT, language targets)
UPLOAD_REPLACED_STEPS = ('LoadMultiViewImages', 'LoadMapAnnotations', 'MapRangeFilter',
                         'MapPermutationTargets', 'LoadMapQuestions')
# metainfo a request must not inherit from the dataset: its questions and their GT answers
DATASET_LANGUAGE_KEYS = ('questions', 'answers', 'qa_types')


class UnknownTokenError(InputError):
    """No sample of the split has this token."""

    def __init__(self, token: str, split: str) -> None:
        super().__init__('token', f'no sample {token!r} in the {split} split')


class NoLanguagePathError(RuntimeError):
    """Questions were asked of a model that cannot answer them; ``result`` still holds the
    predicted map."""

    def __init__(self, result: dict) -> None:
        self.result = result
        super().__init__(NO_LANGUAGE_MESSAGE)


def load_model(cfg: Config, checkpoint: str, device: str = 'cpu') -> torch.nn.Module:
    """Build ``cfg.model`` and load ``checkpoint`` into it, strictly (named key errors)."""
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    model = MODELS.build(cfg.model)
    # weights_only unpickling on torch >= 2.6 (the package allow-lists mmengine's globals)
    ckpt = _load_checkpoint(checkpoint, map_location='cpu', logger='silent')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    allow = cfg.get('checkpoint_check', None) or {}
    check_state_dict(model.state_dict(), state, source=f'checkpoint {checkpoint}',
                     allow_missing=allow.get('allow_missing', ()),
                     allow_unexpected=allow.get('allow_unexpected', ()))
    model.load_state_dict(state, strict=False)  # every key was checked above
    return model.to(device).eval()


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, 'detach') else np.asarray(x)


def instances(sample: Det3DDataSample, name: str) -> dict | None:
    """``polylines`` / ``labels`` / ``scores`` of ``pred_instances_3d`` or
    ``gt_instances_3d`` as numpy (None when the sample has no polylines there)."""
    inst = getattr(sample, name, None)
    if inst is None or 'polylines' not in inst:
        return None
    return {k: _numpy(inst[k]) for k in ('polylines', 'labels', 'scores') if k in inst}


class MapInferencer:
    """A loaded model, its dataset split and the pipelines that make its inputs.

    Thread-safe: one request runs the model at a time. Predictions of a dataset sample
    without questions are cached (``cache_size`` samples), so its pictures and its JSON
    come from one forward pass.

    Args:
        config: config file (loaded with the project's checked ``--cfg-options``) or a
            ``Config``.
        checkpoint: a ``.pth`` file (tools/export_checkpoint.py writes one from a sharded
            folder).
        split: ``'val'`` or ``'test'``: the dataloader whose dataset and pipeline are used.
        device: ``'cpu'``, ``'cuda'`` ...
        cfg_options: ``--cfg-options`` overrides.
    """

    def __init__(self, config: str | Config, checkpoint: str, split: str = 'val',
                 device: str = 'cpu', cfg_options: dict | None = None,
                 cache_size: int = 16) -> None:
        if split not in ('val', 'test'):
            raise ConfigCheckError(f'split must be val or test, got {split!r}')
        if isinstance(config, Config):
            cfg = copy.deepcopy(config)
            if cfg_options:
                cfg.merge_from_dict(cfg_options)
        else:
            cfg = cli.load_config(config, cfg_options, 'none', None)
        if osp.isdir(checkpoint):
            raise ConfigCheckError(f'{checkpoint} is a sharded checkpoint folder; write it '
                                   'as one file with tools/export_checkpoint.py first')
        if '://' not in checkpoint and not osp.isfile(checkpoint):
            raise ConfigCheckError(f'checkpoint not found: {checkpoint}')
        loader = cfg.get(f'{split}_dataloader')
        if not isinstance(loader, dict) or loader.get('dataset') is None:
            raise ConfigCheckError(f'the config has no {split}_dataloader.dataset')
        check_ann_files(cfg, (split,))
        check_pretrained(cfg)
        self.cfg, self.split, self.device = cfg, split, device
        self.model = load_model(cfg, checkpoint, device)
        self.dataset = DATASETS.build(loader['dataset'])
        self.tokens: list[str] = [str(self.dataset.get_data_info(i)['token'])
                                  for i in range(len(self.dataset))]
        self._index = {t: i for i, t in enumerate(self.tokens)}
        meta = self.dataset.metainfo
        self.classes: tuple[str, ...] = tuple(meta.get('classes', ()))
        self.roi_size: tuple[float, float] = tuple(meta.get('roi_size', (30., 60.)))
        first = self.dataset.get_data_info(0) if len(self.dataset) else {}
        self.cam_names: tuple[str, ...] = tuple(first.get('cam_names', NUSCENES_CAMERAS))
        self.num_views = len(self.cam_names)
        self._pipeline_cfg = list(loader['dataset'].get('pipeline', []))
        self._upload_pipeline: Compose | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Det3DDataSample] = OrderedDict()
        self._cache_size = max(1, int(cache_size))

    # ----------------------------------------------------------------- inputs
    def index(self, token: str) -> int:
        """Dataset index of ``token`` (:class:`UnknownTokenError` if it is not in the split)."""
        if token not in self._index:
            raise UnknownTokenError(token, self.split)
        return self._index[token]

    def data_info(self, token: str) -> dict:
        """The dataset's info entry of ``token`` (paths joined, calibration stacked)."""
        return self.dataset.get_data_info(self.index(token))

    def sample_inputs(self, token: str) -> dict:
        """``dict(inputs, data_samples)`` of a dataset sample through the test pipeline."""
        return self.dataset.prepare_data(self.index(token))

    def upload_inputs(self, images: Sequence, calib: dict, token: str = 'upload') -> dict:
        """``dict(inputs, data_samples)`` of uploaded images through the test pipeline
        without its loading and GT steps."""
        results = camera_results(images, calib, self.num_views, self.cam_names)
        results.update(token=token, sample_idx=-1, classes=self.classes,
                       roi_size=self.roi_size)
        return self._upload_steps()(results)

    def _upload_steps(self) -> Compose:
        if self._upload_pipeline is None:
            steps = [s for s in self._pipeline_cfg
                     if str(s.get('type')).split('.')[-1] not in UPLOAD_REPLACED_STEPS]
            for step in steps:
                if str(step.get('type')).split('.')[-1].startswith('Load'):
                    raise InputError('images', f'the test pipeline step {step["type"]} reads '
                                     'files of a dataset sample (e.g. LiDAR points), which an '
                                     'upload of camera images cannot give: use a token')
            init_default_scope(self.cfg.get('default_scope', 'mmdet3d'))
            self._upload_pipeline = Compose(steps)
        return self._upload_pipeline

    # ------------------------------------------------------------------ model
    def run(self, data: dict, questions: Sequence[str] | None = None) -> Det3DDataSample:
        """``model.test_step`` on one packed sample, asking ``questions`` (or none)."""
        sample = data['data_samples']
        for key in DATASET_LANGUAGE_KEYS:
            if key in sample.metainfo:
                delattr(sample, key)
        if questions:
            sample.set_metainfo(dict(questions=list(questions)))
        with self._lock, torch.no_grad():
            return self.model.test_step(pseudo_collate([data]))[0]

    def scene_tokens(self, token: str) -> np.ndarray:
        """``(T, D_q)`` scene tokens of a dataset sample: what the LLM reads of it."""
        data = self.sample_inputs(token)
        with self._lock, torch.no_grad():
            batch = self.model.data_preprocessor(pseudo_collate([data]), False)
            tokens = self.model.scene_tokens(batch['inputs'], batch['data_samples'])
        return tokens[0].float().cpu().numpy()

    def predict_sample(self, token: str) -> Det3DDataSample:
        """The (cached) question-less prediction of a dataset sample, with its GT."""
        with self._lock:
            if token in self._cache:
                self._cache.move_to_end(token)
                return self._cache[token]
        out = self.run(self.sample_inputs(token))
        with self._lock:
            self._cache[token] = out
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def predict(self, token: str | None = None, images: Sequence | None = None,
                calib: dict | None = None, questions: Sequence[str] | None = None,
                score_thr: float | None = None) -> dict:
        """The JSON-able result of one request (see :meth:`result`).

        Give a dataset ``token`` (default: the split's first sample) or ``images`` with
        ``calib``. Raises :class:`InputError` (bad field), :class:`UnknownTokenError` or
        :class:`NoLanguagePathError` (questions, but the model cannot answer).
        """
        questions = _check_questions(questions)
        if score_thr is not None and not np.isfinite(score_thr):
            raise InputError('score_thr', f'must be a finite number, got {score_thr}')
        if images is None and calib is not None:
            raise InputError('calib', 'given without images')
        if images is not None:
            if token is not None:
                raise InputError('token', 'give either a token or images with calib, not both')
            if calib is None:
                raise InputError('calib', 'missing: images need cam2img and lidar2cam')
            out = self.run(self.upload_inputs(images, calib), questions)
        else:
            if token is None:
                if not self.tokens:
                    raise InputError('token', f'the {self.split} split has no samples')
                token = self.tokens[0]
            self.index(token)
            out = (self.run(self.sample_inputs(token), questions) if questions
                   else self.predict_sample(token))
        result = self.result(out, score_thr)
        if questions:
            answers = getattr(out, 'pred_answers', None)
            if answers is None:
                raise NoLanguagePathError(result)
            result['answers'] = _answers(answers, questions)
        return result

    def result(self, sample: Det3DDataSample, score_thr: float | None = None) -> dict:
        """``dict(token, vectors, scores, labels, label_names, answers=None)``: vectors
        (K, num_pts, 2) in metres in the LiDAR frame (x right, y forward), as lists,
        highest score first; ``score_thr`` keeps those scoring at least it."""
        pred = instances(sample, 'pred_instances_3d') or {}
        lines = pred.get('polylines', np.zeros((0, 0, 2), np.float32))
        scores = pred.get('scores', np.ones(len(lines), np.float32))
        labels = pred.get('labels', np.zeros(len(lines), np.int64))
        order = np.argsort(-scores, kind='stable')
        if score_thr is not None:
            order = order[scores[order] >= score_thr]
        names = [self.classes[int(i)] if 0 <= int(i) < len(self.classes) else str(int(i))
                 for i in labels[order]]
        return dict(token=str(sample.metainfo.get('token', '')),
                    vectors=lines[order].astype(float).tolist(),
                    scores=scores[order].astype(float).tolist(),
                    labels=labels[order].astype(int).tolist(), label_names=names,
                    answers=None)

    def reference_qa(self, token: str) -> list[dict[str, Any]]:
        """The question/answer pairs the info entry holds as language targets (GT), if any."""
        language = self.data_info(token).get('language') or {}
        return [dict(type=str(qa.get('type', '')), question=str(qa['question']),
                     answer=str(qa['answer'])) for qa in language.get('qa', [])]


def _check_questions(questions) -> list[str]:
    if questions is None:
        return []
    if isinstance(questions, str):
        questions = [questions]
    out = []
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise InputError(f'question[{i}]' if len(questions) > 1 else 'question',
                             'must be non-empty text')
        out.append(q.strip())
    return out


def _answers(answers, questions: Sequence[str]) -> list[dict[str, str]]:
    """The model's ``pred_answers`` as ``[dict(question, answer)]``, one per question."""
    out = []
    for q, a in zip(questions, answers):
        if isinstance(a, dict):
            out.append(dict(question=str(a.get('question', q)), answer=str(a['answer'])))
        else:
            out.append(dict(question=q, answer=str(a)))
    if len(out) != len(questions):
        raise RuntimeError(f'the model answered {len(out)} of {len(questions)} questions')
    return out
