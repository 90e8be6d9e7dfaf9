"""Chamfer-distance mAP: the fast evaluator against the slow reference, hand-made cases, the
mmengine metric on a real info file, the offline tool, and bad input."""
from __future__ import annotations

import json
import pickle
import runpy
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch

from projects.MapLLaVA.mapllava.evaluation import (
    ChamferMapMetric,
    compute_chamfer_ap,
    evaluate_map_predictions,
)
from projects.MapLLaVA.mapllava.evaluation.chamfer_ap import nearest_matchable_gt, pair_chamfer
from projects.MapLLaVA.mapllava.utils.polyline import (
    resample_packed,
    resample_polyline,
    resample_polylines,
)
from tools.benchmarks.reference_chamfer_ap import chamfer, reference_chamfer_ap, resample

REPO = Path(__file__).resolve().parents[1]
ROI = np.array([15.0, 30.0])
CLASSES = ('divider', 'ped_crossing', 'boundary')


# ----------------------------------------------------------------------------- random cases
def _random_line(rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(['straight', 'curve', 'curve', 'ring', 'zigzag', 'short', 'zero',
                       'repeat', 'long'])
    start = rng.uniform(-ROI, ROI)
    if kind == 'straight':
        return np.stack([start, start + rng.normal(0, 8, 2)])
    if kind == 'curve':
        n = rng.integers(3, 25)
        steps = rng.normal(0, 1, (n - 1, 2)).cumsum(0) * 0.3 + rng.normal(0, 1, 2)
        return np.concatenate([[start], start + np.cumsum(steps, 0)])
    if kind == 'ring':
        n = rng.integers(3, 7)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        pts = start + rng.uniform(1, 6, (n, 1)) * np.stack([np.cos(ang), np.sin(ang)], 1)
        return np.concatenate([pts, pts[:1]])
    if kind == 'zigzag':  # sharp turns exercise the mitre joins and their limit
        n = rng.integers(3, 10)
        return start + np.cumsum(rng.normal(0, 3, (n, 2)), 0)
    if kind == 'short':
        return np.stack([start, start + rng.normal(0, 1, 2) * rng.choice([1e-3, 0.02, 0.3])])
    if kind == 'zero':
        return np.repeat(start[None], rng.integers(1, 4), 0)
    if kind == 'repeat':
        pts = start + np.cumsum(rng.normal(0, 2, (5, 2)), 0)
        return np.repeat(pts, rng.integers(1, 3, 5), axis=0)
    return np.stack([start, start + rng.normal(0, 30, 2), start + rng.normal(0, 30, 2)])


def _pred_from(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """A prediction near a GT line: noisy / reversed / shifted / truncated / continued."""
    kind = rng.choice(['noisy', 'noisy', 'exact', 'reversed', 'shift', 'continue', 'part'])
    g = gt.astype(np.float64)
    if len(g) >= 2 and kind in ('noisy', 'reversed', 'part'):
        g = resample_polyline(g, int(rng.choice([2, 5, 20])))
    if kind == 'noisy':
        return g + rng.normal(0, rng.choice([0.05, 0.3, 1.0]), g.shape)
    if kind == 'reversed':
        return g[::-1] + rng.normal(0, 0.1, g.shape)
    if kind == 'shift':  # around the 2 x 2 m buffer gap
        return g + rng.normal(0, 1, 2) / np.sqrt(2) * rng.uniform(1.5, 4.5)
    if kind == 'continue' and len(g) >= 2 and np.any(g[-1] != g[-2]):  # flat caps
        d = (g[-1] - g[-2]) / np.linalg.norm(g[-1] - g[-2])
        start = g[-1] + d * rng.uniform(-0.3, 1.0) + rng.normal(0, 0.3, 2) * rng.choice([0, 1])
        return np.stack([start, start + d * rng.uniform(0.2, 3)])
    if kind == 'part' and len(g) > 2:
        a = rng.integers(0, len(g) - 1)
        return g[a:a + 2 + rng.integers(0, len(g))]
    return g.copy()


def random_case(rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    gts, preds = [], []
    for _ in range(rng.integers(1, 4)):
        n_gt = int(rng.choice([0, 1, 2, 3, 5]))
        g_vecs = [_random_line(rng) for _ in range(n_gt)]
        g_lab = rng.integers(0, 3, n_gt)
        p_vecs, p_lab = [], []
        for v, lab in zip(g_vecs, g_lab):
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                p_vecs.append(_pred_from(rng, v))
                p_lab.append(lab if rng.random() < 0.9 else rng.integers(0, 3))
        for _ in range(rng.integers(0, 4)):  # unrelated false positives
            p_vecs.append(_random_line(rng))
            p_lab.append(rng.integers(0, 3))
        if rng.random() < 0.1:
            p_vecs, p_lab = [], []
        # coarse scores make ties common, within and across samples
        scores = np.round(rng.uniform(0, 1, len(p_vecs)), int(rng.choice([1, 2, 6])))
        gts.append(dict(vectors=g_vecs, labels=np.asarray(g_lab, dtype=np.int64)))
        preds.append(dict(vectors=p_vecs, scores=scores.astype(np.float32),
                          labels=np.asarray(p_lab, dtype=np.int64)))
    return gts, preds


THRESHOLD_SETS = [(0.5, 1.0, 1.5), (0.2, 0.5, 1.0), (1.0, 2.5, 4.5)]


@pytest.mark.parametrize('seed', range(8))
def test_fast_path_equals_reference_on_random_cases(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for case in range(250):
        gts, preds = random_case(rng)
        thresholds = THRESHOLD_SETS[case % len(THRESHOLD_SETS)]
        pts = 100 if case % 4 else int(rng.choice([7, 20, 33]))
        with pytest.warns(RuntimeWarning) if _has_bad_gt(gts) else _no_warning():
            fast = compute_chamfer_ap(gts, preds, 3, thresholds, num_sample_pts=pts)
        ref = reference_chamfer_ap(gts, preds, 3, thresholds, num_sample_pts=pts)
        np.testing.assert_allclose(fast.ap, ref, atol=1e-6, rtol=0,
                                   err_msg=f'seed {seed} case {case}')


def test_fast_path_equals_reference_on_benchmark_workload() -> None:
    from tools.benchmarks.bench_chamfer_map import make_workload
    gts, preds = make_workload(4, seed=3)
    fast = compute_chamfer_ap(gts, preds, 3)
    np.testing.assert_allclose(fast.ap, reference_chamfer_ap(gts, preds, 3), atol=1e-6, rtol=0)
    assert 0.2 < fast.mean_ap < 0.9  # the workload is neither trivial nor hopeless


def test_pair_distances_and_sure_intersections_agree_with_shapely() -> None:
    """Every pair the fast path keeps has the reference chamfer distance, and every pair it
    declares "surely intersecting" without shapely does intersect according to shapely."""
    rng = np.random.default_rng(123)
    lines = [_random_line(rng) for _ in range(60)]
    lines = [v for v in lines if len(v) >= 2] + [_pred_from(rng, v) for v in lines if len(v) >= 2]
    pts = resample_polylines(lines, 100)
    n = len(pts)
    pi, gi, dist, sure = pair_chamfer(pts, pts, np.zeros(n, np.int64), np.full(n, n), 5.0, 2.0)
    assert sure.sum() > 200 and (~sure).sum() > 20
    kw = dict(cap_style='flat', join_style='mitre')
    bufs = shapely.buffer(shapely.linestrings(pts), 2.0, **kw)
    assert shapely.intersects(bufs[pi[sure]], bufs[gi[sure]]).all()
    for k in rng.choice(len(pi), 300, replace=False):
        assert dist[k] == pytest.approx(chamfer(pts[pi[k]], pts[gi[k]]), abs=1e-12)


def _has_bad_gt(gts: list[dict]) -> bool:
    return any(len(v) < 2 for g in gts for v in g['vectors'])


class _no_warning:
    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter('error', RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# ----------------------------------------------------------------------------- hand-made cases
def _line(*pts: tuple[float, float]) -> np.ndarray:
    return np.asarray(pts, dtype=np.float32)


def _sample(vectors, labels, scores=None) -> dict:
    out = dict(vectors=list(vectors), labels=np.asarray(labels, dtype=np.int64))
    if scores is not None:
        out['scores'] = np.asarray(scores, dtype=np.float32)
    return out


GT_A = [_line((0, 0), (0, 20)), _line((5, -10), (5, 10), (8, 20)), _line((-3, 0), (-9, 0))]


def test_perfect_predictions_score_one() -> None:
    gts = [_sample(GT_A, [0, 2, 1])]
    preds = [_sample([v[::-1] for v in GT_A], [0, 2, 1], [0.9, 0.8, 0.7])]
    res = compute_chamfer_ap(gts, preds, 3)
    np.testing.assert_allclose(res.ap, 1.0)
    assert res.mean_ap == pytest.approx(1.0)


def test_only_false_positives_score_zero() -> None:
    gts = [_sample(GT_A, [0, 0, 0])]
    preds = [_sample([GT_A[0] + 20, GT_A[1]], [0, 1], [0.9, 0.8])]  # too far, wrong class
    res = compute_chamfer_ap(gts, preds, 3)
    assert res.ap.max() == 0.0 and res.num_dets.tolist() == [1, 1, 0]


def test_hand_computed_ap() -> None:
    """Two GT dividers; detections by score: TP, FP (duplicate of GT 0), TP (0.8 m off).

    thr 0.5: TP FP FP -> recall 1/2 at precision 1 -> AP 0.5.
    thr 1.0 and 1.5: TP FP TP -> precision envelope 1 up to recall 1/2, then 2/3 -> AP
    0.5 + 0.5 * 2/3 = 5/6. Class AP = (0.5 + 5/6 + 5/6) / 3 = 13/18."""
    gts = [_sample([_line((0, 0), (0, 10)), _line((10, 0), (10, 10))], [0, 0])]
    preds = [_sample([_line((0, 0), (0, 10)), _line((0.1, 0), (0.1, 10)),
                      _line((10.8, 0), (10.8, 10))], [0, 0, 0], [0.9, 0.8, 0.7])]
    res = compute_chamfer_ap(gts, preds, 1)
    np.testing.assert_allclose(res.ap[0], [0.5, 5 / 6, 5 / 6], atol=1e-12)
    assert res.mean_ap == pytest.approx(13 / 18)


def test_nearest_gt_only_no_fallback_and_buffer_gate() -> None:
    """A prediction takes its nearest GT only; if that GT is taken it is a FP even when a
    second GT is within the threshold. Lines whose flat-capped buffers miss are never
    matched, however small their chamfer distance."""
    gts = [_sample([_line((0, 0), (0, 10)), _line((0.6, 0), (0.6, 10))], [0, 0])]
    preds = [_sample([_line((0, 0), (0, 10)), _line((0.1, 0), (0.1, 10))], [0, 0], [0.9, 0.8])]
    res = compute_chamfer_ap(gts, preds, 1, thresholds=(1.0,))
    assert res.ap[0, 0] == pytest.approx(0.5)  # second pred: nearest GT 0 taken -> FP
    # collinear, 0.3 m gap between flat caps: chamfer 0.8 m but the buffers do not meet
    gts = [_sample([_line((0, 0), (0, 1))], [0])]
    preds = [_sample([_line((0, 1.3), (0, 2.3))], [0], [1.0])]
    assert compute_chamfer_ap(gts, preds, 1, thresholds=(1.0,)).ap[0, 0] == 0.0
    preds = [_sample([_line((0, 0.9), (0, 1.9))], [0], [1.0])]  # overlapping: matched
    assert compute_chamfer_ap(gts, preds, 1, thresholds=(1.0,)).ap[0, 0] == 1.0


def test_equal_scores_keep_sample_then_prediction_order() -> None:
    """Equal scores are ranked by sample order, then prediction order (a stable sort)."""
    gts = [_sample([_line((0, 0), (0, 10))], [0]), _sample([_line((0, 0), (0, 10))], [0])]
    fp, tp = _line((30, 0), (30, 10)), _line((0, 0), (0, 10))
    first_fp = [_sample([fp], [0], [0.5]), _sample([tp], [0], [0.5])]
    first_tp = [_sample([tp], [0], [0.5]), _sample([fp], [0], [0.5])]
    # FP then TP: precision 1/2 at recall 1/2 -> AP 0.25; TP then FP -> AP 0.5
    assert compute_chamfer_ap(gts, first_fp, 1).mean_ap == pytest.approx(0.25)
    assert compute_chamfer_ap(gts, first_tp, 1).mean_ap == pytest.approx(0.5)


def test_empty_inputs() -> None:
    gts = [_sample(GT_A, [0, 1, 2]), _sample([], [])]
    res = compute_chamfer_ap(gts, [_sample([], [], []), _sample([], [], [])], 3)
    assert res.mean_ap == 0.0 and res.num_gts.tolist() == [1, 1, 1]
    res = compute_chamfer_ap([], [], 3)
    assert res.mean_ap == 0.0
    empty = dict(vectors=np.zeros((0, 20, 2)), scores=np.zeros(0), labels=np.zeros(0, int))
    assert compute_chamfer_ap([_sample([], [])], [empty], 3).mean_ap == 0.0


def test_class_without_gt_counts_as_zero_in_map() -> None:
    gts = [_sample([GT_A[0]], [0])]
    preds = [_sample([GT_A[0]], [0], [1.0])]
    res = compute_chamfer_ap(gts, preds, 3)
    assert res.class_ap.tolist() == [1.0, 0.0, 0.0] and res.mean_ap == pytest.approx(1 / 3)


def test_batched_resampling_is_bit_exact() -> None:
    rng = np.random.default_rng(0)
    lines = [_random_line(rng).astype(np.float32 if k % 2 else np.float64) for k in range(300)]
    out = resample_polylines(lines, 50)
    for v, o in zip(lines, out):
        assert np.array_equal(resample_polyline(v.astype(np.float64), 50), o)
        if len(v) >= 2:  # shapely's interpolate, bit for bit (closed rings stay closed)
            assert np.array_equal(o, resample(v, 50))
    arr = rng.normal(0, 5, (4, 6, 3))
    assert np.array_equal(resample_polylines(arr, 9)[2], resample_polyline(arr[2], 9))
    with pytest.raises(ValueError, match='vertex'):
        resample_packed(np.zeros((3, 2)), [0, 2], [2, 2], 10)


def test_nearest_matchable_gt_ties_go_to_first_gt() -> None:
    from projects.MapLLaVA.mapllava.evaluation.chamfer_ap import _Lines
    gt_pts = resample_polylines([_line((0, 0), (0, 10))] * 2, 100)
    pred_pts = resample_polylines([_line((0.2, 0), (0.2, 10))], 100)
    best_gt, best_d = nearest_matchable_gt(_Lines(pred_pts, np.zeros(1, int), np.ones(1)),
                                           _Lines(gt_pts, np.zeros(2, int), np.zeros(2)), 1.5, 2.0)
    assert best_gt.tolist() == [0] and best_d[0] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- bad input
def test_non_finite_vectors_are_dropped_with_a_warning() -> None:
    gts = [_sample(GT_A, [0, 0, 0])]
    bad = _line((0, 0), (np.nan, 20))
    preds = [_sample([GT_A[0], bad, _line((0, 0), (np.inf, 1)), GT_A[1]], [0, 0, 0, 0],
                     [0.9, 0.95, 0.99, 0.8])]
    with pytest.warns(RuntimeWarning, match='dropped 2 prediction'):
        res = compute_chamfer_ap(gts, preds, 1)
    assert res.num_dropped_preds == 2 and res.num_dets.tolist() == [2]
    clean = compute_chamfer_ap(gts, [_sample([GT_A[0], GT_A[1]], [0, 0], [0.9, 0.8])], 1)
    np.testing.assert_array_equal(res.ap, clean.ap)
    nan_score = [_sample([GT_A[0]], [0], [np.nan])]
    with pytest.warns(RuntimeWarning, match='dropped 1 prediction'):
        compute_chamfer_ap(gts, nan_score, 1)
    with pytest.warns(RuntimeWarning, match='dropped 1 GT'):
        res = compute_chamfer_ap([_sample([bad, GT_A[0]], [0, 0])], [_sample([], [], [])], 1)
    assert res.num_gts.tolist() == [1]


def test_single_point_predictions_are_dropped_silently() -> None:
    gts = [_sample([GT_A[0]], [0])]
    preds = [_sample([_line((0, 0)), GT_A[0]], [0, 0], [0.9, 0.8])]
    res = compute_chamfer_ap(gts, preds, 1)
    assert res.num_short_preds == 1 and res.mean_ap == 1.0


@pytest.mark.parametrize('pred, match', [
    (dict(vectors=[np.zeros((3, 3))], scores=[1.0], labels=[0]), r"'tok0'.*vectors\[0\]"),
    (dict(vectors=np.zeros((2, 5)), scores=[1.0, 1.0], labels=[0, 0]), "'tok0'.*shape"),
    (dict(vectors=[np.zeros((3, 2))], scores=[1.0, 0.5], labels=[0]), "'tok0'.*scores"),
    (dict(vectors=[np.zeros((3, 2))], scores=[1.0], labels=[7]), "'tok0'.*label 7"),
    (dict(vectors=[np.zeros((3, 2))], scores=[1.0], labels=[0.0]), "'tok0'.*labels"),
    (dict(vectors=[np.zeros((3, 2))], scores=[1.0], labels=[0, 1]), "'tok0'.*labels"),
    (dict(vectors=[np.zeros((3, 2))], labels=[0]), "'tok0'.*scores"),
])
def test_bad_predictions_raise(pred: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_chamfer_ap([_sample([], [])], [pred], 3, sample_names=['tok0'])


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match='thresholds'):
        compute_chamfer_ap([], [], 3, thresholds=(0.5, np.nan))
    with pytest.raises(ValueError, match='num_sample_pts'):
        compute_chamfer_ap([], [], 3, num_sample_pts=1)
    with pytest.raises(ValueError, match='1 GT samples but 0'):
        compute_chamfer_ap([_sample([], [])], [], 3)


# ----------------------------------------------------------------------------- metric & tool
def _info(token: str, vectors: list[np.ndarray], labels: list[int]) -> dict:
    """An info entry shaped as in docs/data_format.md (fields the evaluator ignores kept)."""
    vecs = [np.asarray(v, dtype=np.float32) for v in vectors]
    res = resample_polylines(vecs, 20).astype(np.float32) if vecs else np.zeros((0, 20, 2))
    return dict(
        token=token, sample_idx=0, scene_token='scene', scene_name='scene-0001',
        location='boston-seaport', timestamp=0, ego2global=np.eye(4), lidar2ego=np.eye(4),
        lidar_points=dict(lidar_path='samples/LIDAR_TOP/x.pcd.bin', num_pts_feats=5),
        lidar_sweeps=[], images={},
        map_annos=dict(labels=np.asarray(labels, dtype=np.int64), vectors=vecs,
                       vectors_resampled=res.astype(np.float32),
                       bboxes=np.array([[*v.min(0), *v.max(0)] for v in vecs],
                                       dtype=np.float32).reshape(-1, 4),
                       is_closed=np.array([bool(np.all(v[0] == v[-1])) for v in vecs])))


@pytest.fixture
def info_file(tmp_path: Path) -> Path:
    """Info file with 4 classes (label 3 = centerline, never evaluated here)."""
    data_list = [
        _info('tok-a', [GT_A[0], GT_A[1], GT_A[2], _line((1, 1), (2, 2))], [0, 2, 1, 3]),
        _info('tok-b', [_line((-5, -20), (-5, 20))], [0]),
        _info('tok-c', [], []),
    ]
    path = tmp_path / 'nuscenes_map_infos_val.pkl'
    meta = dict(classes=CLASSES + ('centerline',), roi_size=(30., 60.), version='v1.0-mini',
                dataset='nuscenes', info_version=1)
    with open(path, 'wb') as f:
        pickle.dump(dict(metainfo=meta, data_list=data_list), f)
    return path


def _pred_samples():
    """Det3DDataSamples as the model returns them: (a) perfect, (b) one FP, (c) nothing."""
    from mmdet3d.structures import Det3DDataSample
    from mmengine.structures import InstanceData
    out = []
    specs = [('tok-a', [GT_A[0], GT_A[1], GT_A[2]], [0, 2, 1], [0.9, 0.8, 0.7]),
             ('tok-b', [_line((9, -20), (9, 20))], [0], [0.6]), ('tok-c', [], [], [])]
    for token, vecs, labels, scores in specs:
        ds = Det3DDataSample(metainfo=dict(token=token, sample_idx=0))
        inst = InstanceData()
        inst.polylines = torch.from_numpy(resample_polylines(vecs, 20).astype(np.float32))
        inst.scores = torch.tensor(scores, dtype=torch.float32)
        inst.labels = torch.tensor(labels, dtype=torch.int64)
        ds.pred_instances_3d = inst
        out.append(ds)
    return out


def test_metric_through_mmengine_evaluator(info_file: Path) -> None:
    from mmengine.evaluator import Evaluator
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet3d')
    evaluator = Evaluator(dict(type='ChamferMapMetric', ann_file=str(info_file)))
    evaluator.dataset_meta = dict(classes=CLASSES)
    samples = _pred_samples()
    evaluator.process(data_samples=samples[2:] + samples[:2])  # order must not matter
    metrics = evaluator.evaluate(3)
    # divider: GTs (a0, b0), dets a0 (TP 0.9), b-FP (0.6) -> AP 0.5; the others perfect
    assert metrics['NuscMap_chamfer/AP_divider'] == pytest.approx(0.5)
    assert metrics['NuscMap_chamfer/AP_divider_0.5'] == pytest.approx(0.5)
    assert metrics['NuscMap_chamfer/AP_ped_crossing_1.5'] == pytest.approx(1.0)
    assert metrics['NuscMap_chamfer/AP_boundary'] == pytest.approx(1.0)
    assert metrics['NuscMap_chamfer/mAP'] == pytest.approx(2.5 / 3)
    assert len(metrics) == 1 + 3 + 9


def test_metric_errors_name_the_token(info_file: Path) -> None:
    metric = ChamferMapMetric(ann_file=str(info_file))
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, [s.to_dict() for s in _pred_samples()])
    metric.results[1]['token'] = 'not-a-token'
    with pytest.raises(ValueError, match="'not-a-token'"):
        metric.compute_metrics(metric.results)
    metric.results[1]['token'] = 'tok-a'
    with pytest.raises(ValueError, match="two prediction entries for token 'tok-a'"):
        metric.compute_metrics(metric.results)
    metric.results[1].update(token='tok-b', labels=np.array([5]))
    with pytest.raises(ValueError, match="'tok-b'.*label 5"):
        metric.compute_metrics(metric.results)


def test_metric_on_subset_and_nan(info_file: Path, capsys) -> None:
    results = [dict(token='tok-b', vectors=np.full((1, 20, 2), np.nan, np.float32),
                    scores=np.ones(1, np.float32), labels=np.zeros(1, np.int64))]
    metrics, res = evaluate_map_predictions(results, str(info_file))
    assert res.num_dropped_preds == 1 and res.num_gts.tolist() == [1, 0, 0]
    assert metrics['mAP'] == 0.0


def _tool_main():
    return runpy.run_path(str(REPO / 'tools' / 'eval_map.py'), run_name='eval_map')['main']


def test_eval_map_tool_formats(info_file: Path, tmp_path: Path) -> None:
    main = _tool_main()
    recs = [s.to_dict() for s in _pred_samples()]
    ours = dict(meta=dict(classes=list(CLASSES)), results=[
        dict(token=r['token'], vectors=r['pred_instances_3d']['polylines'].numpy(),
             scores=r['pred_instances_3d']['scores'].numpy(),
             labels=r['pred_instances_3d']['labels'].numpy()) for r in recs])
    pkl = tmp_path / 'preds.pkl'
    pkl.write_bytes(pickle.dumps(ours))
    out = tmp_path / 'metrics.json'
    metrics = main([str(pkl), '--ann-file', str(info_file), '--out', str(out)])
    assert metrics['mAP'] == pytest.approx(2.5 / 3)
    assert json.loads(out.read_text()) == pytest.approx(metrics)
    # tools/test.py --out writes "polylines"; json with ragged lists; reordered class names
    dump = dict(meta=dict(classes=['boundary', 'divider', 'ped_crossing']), results=[
        dict(token=r['token'], polylines=[v.tolist() for v in r['vectors']],
             scores=r['scores'].tolist(), labels=[(int(lab) + 1) % 3 for lab in r['labels']])
        for r in ours['results']])
    js = tmp_path / 'preds.json'
    js.write_text(json.dumps(dump))
    assert main([str(js), '--ann-file', str(info_file)]) == pytest.approx(metrics)
    # MapTR submission style
    maptr = dict(meta={}, results={r['token']: dict(vectors=[
        dict(pts=v.tolist(), pts_num=len(v), cls_name=CLASSES[lab], type=int(lab),
             confidence_level=float(s)) for v, s, lab in zip(r['vectors'], r['scores'],
                                                             r['labels'])])
        for r in ours['results']})
    js.write_text(json.dumps(maptr))
    assert main([str(js), '--ann-file', str(info_file)]) == pytest.approx(metrics)
    # thresholds and classes from the command line
    m2 = main([str(pkl), '--ann-file', str(info_file), '--classes', 'divider',
               '--thresholds', '0.2', '0.5', '1.0'])
    assert set(m2) == {'mAP', 'AP_divider', 'AP_divider_0.2', 'AP_divider_0.5', 'AP_divider_1.0'}


def test_eval_map_tool_rejects_bad_files(info_file: Path, tmp_path: Path) -> None:
    main = _tool_main()
    bad = tmp_path / 'bad.pkl'
    bad.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match='"results"'):
        main([str(bad), '--ann-file', str(info_file)])
    bad.write_bytes(pickle.dumps(dict(results=[dict(vectors=[], scores=[], labels=[])])))
    with pytest.raises(ValueError, match='no "token"'):
        main([str(bad), '--ann-file', str(info_file)])
