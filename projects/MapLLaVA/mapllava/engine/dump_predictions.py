"""``DumpMapPredictions``: write test predictions in the offline evaluator's format.

``tools/test.py --out preds.json`` (or ``preds.pkl``) appends this metric to ``test_evaluator``
so one test run gives both the online metrics and a file ``tools/eval_map.py`` can score again
later. It subclasses ``BaseMetric`` so results from every rank are gathered by mmengine before
rank 0 writes the file. JSON holds the same content as the pickle (arrays as nested lists) and
is what other codebases should exchange: reading it runs no code.
"""
from __future__ import annotations

import io
import json
import os
import os.path as osp
import pickle
from typing import Optional, Sequence

import numpy as np
import torch
from mmdet3d.registry import METRICS
from mmengine.evaluator import BaseMetric

from .runner_conventions import atomic_write

FORMAT_NAME = 'mapllava-predictions'
FORMAT_VERSION = 1


def _numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def prediction_record(data_sample: dict) -> dict:
    """One sample's predictions as plain numpy: token, polylines, scores, labels, and the
    generated ``answers`` (str fields only) when the model answered questions, so that
    ``tools/eval_map.py`` can score them again too."""
    pred = data_sample['pred_instances_3d']
    record = dict(token=data_sample['token'],
                  polylines=_numpy(pred['polylines'], np.float32),
                  scores=_numpy(pred['scores'], np.float32),
                  labels=_numpy(pred['labels'], np.int64))
    if 'pred_answers' in data_sample:
        record['answers'] = [{k: str(a[k]) for k in ('type', 'question', 'answer') if k in a}
                             for a in data_sample['pred_answers']]
    return record


@METRICS.register_module()
class DumpMapPredictions(BaseMetric):
    """Collect ``pred_instances_3d`` per sample and write them to ``out_file_path``.

    File layout (``.pkl``, or ``.json`` with lists for arrays): ``dict(meta=dict(format,
    version, classes, roi_size), results=[dict(token, polylines (K, P, 2) float32 metres,
    scores (K,) float32, labels (K,) int64[, answers=[dict(type, question, answer)]]), ...])``.
    Returns no metrics.
    """

    default_prefix = 'dump'

    def __init__(self, out_file_path: str, collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not out_file_path.endswith(('.json', '.pkl', '.pickle')):
            raise ValueError(f'--out must end with .json or .pkl, got {out_file_path!r}')
        self.out_file_path = out_file_path

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Keep only what the offline evaluator needs (small, CPU numpy)."""
        self.results.extend(prediction_record(ds) for ds in data_samples)

    def compute_metrics(self, results: list) -> dict:
        """Write the file on rank 0 (mmengine calls this there only)."""
        meta = dict(format=FORMAT_NAME, version=FORMAT_VERSION)
        if self.dataset_meta:
            meta.update(classes=tuple(self.dataset_meta.get('classes', ())),
                        roi_size=self.dataset_meta.get('roi_size'))
        if self.out_file_path.endswith('.json'):
            data = json.dumps(dict(meta=meta, results=results), default=_json_value).encode()
        else:
            buf = io.BytesIO()
            pickle.dump(dict(meta=meta, results=results), buf, protocol=pickle.HIGHEST_PROTOCOL)
            data = buf.getvalue()
        os.makedirs(osp.dirname(osp.abspath(self.out_file_path)), exist_ok=True)
        atomic_write(self.out_file_path, data)
        return {}


def _json_value(value: object) -> object:
    """numpy arrays / scalars as lists / numbers (float32 values written exactly)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f'cannot write {type(value).__name__} to the predictions json')
