"""mmengine metric (and the shared offline entry point) for chamfer-distance map mAP."""
from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np
from mmdet3d.registry import METRICS
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from terminaltables import AsciiTable

from ..utils.safe_pickle import load_data_file
from .chamfer_ap import ChamferAPResult, compute_chamfer_ap

MAP_CLASSES = ('divider', 'ped_crossing', 'boundary')


def evaluate_map_predictions(results: Sequence[dict], ann_file: str,
                             classes: Sequence[str] = MAP_CLASSES,
                             pred_classes: Sequence[str] | None = None,
                             thresholds: Sequence[float] = (0.5, 1.0, 1.5),
                             num_sample_pts: int = 100, buffer: float = 2.0,
                             logger: str = 'current') -> tuple[dict[str, float], ChamferAPResult]:
    """Score predictions against the GT of an info file (used by the metric and the tool).

    Args:
        results: ``dict(token, vectors, scores, labels)`` per sample, labels indexing
            ``pred_classes``; samples without predictions may be left out (see below).
        ann_file: info ``.pkl`` in the docs/data_format.md layout.
        classes: classes to evaluate, by name; GT and predictions of other classes are
            ignored.
        pred_classes: names of the prediction labels (default: ``classes``).

    Samples are ordered as in ``ann_file`` (fixing the order of equal scores whatever order
    the ranks gathered them in). Info samples without a result are left out of the
    evaluation, with a warning: a partial result file scores only the samples it covers.

    Returns:
        ``(metrics, result)``: ``mAP``, ``AP_<class>``, ``AP_<class>_<thr>`` and the raw result.
    """
    classes = tuple(classes)
    pred_classes = tuple(pred_classes) if pred_classes is not None else classes
    infos = load_data_file(ann_file)  # .pkl: builtins and numpy arrays only
    info_classes = tuple(infos.get('metainfo', {}).get('classes', MAP_CLASSES))
    index = {info['token']: i for i, info in enumerate(infos['data_list'])}
    ordered = _order_by_info(results, index, ann_file)
    if len(ordered) < len(index):
        print_log(f'ChamferMapMetric: {len(index) - len(ordered)} of the {len(index)} samples in '
                  f'{ann_file} have no prediction entry and are not evaluated',
                  logger=logger, level=logging.WARNING)
    gts, preds = [], []
    for res in ordered:
        info = infos['data_list'][index[res['token']]]
        if 'map_annos' not in info:
            raise ValueError(f'sample {res["token"]!r} in {ann_file} has no map_annos (a test '
                             'split?); cannot evaluate it')
        gts.append(_select(info['map_annos'], info_classes, classes, res['token'], 'GT'))
        preds.append(_select(res, pred_classes, classes, res['token'], 'prediction'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # reported through the logger below
        result = compute_chamfer_ap(gts, preds, len(classes), thresholds, num_sample_pts, buffer,
                                    sample_names=[r['token'] for r in ordered])
    for kind, n in (('prediction', result.num_dropped_preds), ('GT', result.num_dropped_gts)):
        if n:
            print_log(f'ChamferMapMetric: dropped {n} {kind} vector(s) with non-finite '
                      'coordinates/scores' + (' or < 2 vertices' if kind == 'GT' else ''),
                      logger=logger, level=logging.WARNING)
    print_log('\n' + format_table(result, classes), logger=logger)
    return metrics_dict(result, classes), result


def metrics_dict(result: ChamferAPResult, classes: Sequence[str]) -> dict[str, float]:
    """``mAP``, ``AP_<class>`` (mean over thresholds) and ``AP_<class>_<thr>``."""
    out = {'mAP': result.mean_ap}
    for c, name in enumerate(classes):
        out[f'AP_{name}'] = float(result.class_ap[c])
        for t, thr in enumerate(result.thresholds):
            out[f'AP_{name}_{thr}'] = float(result.ap[c, t])
    return out


def format_table(result: ChamferAPResult, classes: Sequence[str]) -> str:
    """Per-class x threshold AP table, as mmdet prints its mAP summary."""
    header = (['class', 'gts', 'dets'] + [f'AP@{thr}' for thr in result.thresholds] + ['AP'])
    rows = [header]
    for c, name in enumerate(classes):
        rows.append([name, str(result.num_gts[c]), str(result.num_dets[c])]
                    + [f'{v:.4f}' for v in result.ap[c]] + [f'{result.class_ap[c]:.4f}'])
    per_thr = result.ap.mean(axis=0) if len(classes) else np.zeros(len(result.thresholds))
    rows.append(['mAP', '', ''] + [f'{v:.4f}' for v in per_thr] + [f'{result.mean_ap:.4f}'])
    table = AsciiTable(rows, title='chamfer-distance AP')
    table.inner_footing_row_border = True
    return table.table


def _order_by_info(results: Sequence[dict], index: dict[str, int], ann_file: str) -> list[dict]:
    seen: set[str] = set()
    for res in results:
        if 'token' not in res:
            raise ValueError(f'a prediction entry has no "token" key (keys: {sorted(res)})')
        token = res['token']
        if token not in index:
            raise ValueError(f'prediction for token {token!r}, which is not in {ann_file}')
        if token in seen:
            raise ValueError(f'two prediction entries for token {token!r}')
        seen.add(token)
    return sorted(results, key=lambda r: index[r['token']])


def _select(entry: dict, names: Sequence[str], classes: Sequence[str], token: str,
            kind: str) -> dict:
    """Relabel ``entry`` from ``names`` indices to ``classes`` indices; drop other classes."""
    for key in ('vectors', 'labels') + (('scores',) if kind == 'prediction' else ()):
        if key not in entry:
            raise ValueError(f'{kind} {token!r}: missing key {key!r}')
    labels = np.asarray(entry['labels'])
    if labels.size and (labels.ndim != 1 or labels.dtype.kind not in 'iu'):
        raise ValueError(f'{kind} {token!r}: "labels" must be a 1-D integer array, got shape '
                         f'{labels.shape} dtype {labels.dtype}')
    labels = labels.astype(np.int64).reshape(-1)
    bad = (labels < 0) | (labels >= len(names))
    if bad.any():
        raise ValueError(f'{kind} {token!r}: unknown class label {int(labels[bad][0])} '
                         f'(classes: {list(names)})')
    lut = np.array([classes.index(n) if n in classes else -1 for n in names] + [-1])
    new = lut[labels]
    keep = np.flatnonzero(new >= 0)
    vectors = entry['vectors']
    if len(vectors) != len(labels):
        raise ValueError(f'{kind} {token!r}: {len(vectors)} vectors but {len(labels)} labels')
    if isinstance(vectors, (list, tuple)):
        vectors = [vectors[i] for i in keep]
    else:
        vectors = np.asarray(vectors)[keep]
    out = dict(vectors=vectors, labels=new[keep])
    if kind == 'prediction':
        scores = np.asarray(entry['scores']).reshape(-1)
        if len(scores) != len(labels):
            raise ValueError(f'{kind} {token!r}: {len(labels)} labels but {len(scores)} scores')
        out['scores'] = scores[keep]
    return out


@METRICS.register_module()
class ChamferMapMetric(BaseMetric):
    """MapTR's chamfer-distance mAP for vectorized map predictions (docs/evaluation.md).

    Args:
        ann_file: info ``.pkl`` holding the GT (``map_annos``) of the evaluated split.
        classes: classes to evaluate, by name. Prediction labels index the dataset's
            ``metainfo['classes']`` (or ``classes`` when the metric has no dataset meta).
        thresholds: chamfer-distance thresholds in metres.
        num_sample_pts: points per line after arc-length resampling.
        buffer: buffer half width (m) of the pred/GT intersection gate.
    """

    default_prefix = 'NuscMap_chamfer'

    def __init__(self, ann_file: str, classes: Sequence[str] = MAP_CLASSES,
                 thresholds: Sequence[float] = (0.5, 1.0, 1.5), num_sample_pts: int = 100,
                 buffer: float = 2.0, collect_device: str = 'cpu',
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file = ann_file
        self.classes = tuple(classes)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.num_sample_pts = num_sample_pts
        self.buffer = buffer

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Keep each sample's predictions as numpy (picklable, cheap to gather)."""
        for sample in data_samples:
            token = sample.get('token', sample.get('metainfo', {}).get('token'))
            if token is None:
                raise ValueError('data sample without a "token" in its metainfo')
            pred = sample['pred_instances_3d']
            self.results.append(dict(
                token=token,
                vectors=_to_numpy(pred['polylines']).astype(np.float32),
                scores=_to_numpy(pred['scores']).astype(np.float32),
                labels=_to_numpy(pred['labels']).astype(np.int64)))

    def compute_metrics(self, results: list) -> dict[str, float]:
        pred_classes = (self.dataset_meta or {}).get('classes', self.classes)
        metrics, _ = evaluate_map_predictions(results, self.ann_file, self.classes, pred_classes,
                                              self.thresholds, self.num_sample_pts, self.buffer)
        return metrics


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, 'detach') else np.asarray(x)
