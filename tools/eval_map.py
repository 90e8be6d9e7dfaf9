"""Score saved map predictions with the chamfer-distance mAP (MapTR protocol), offline.

    python tools/eval_map.py PREDS.json --ann-file data/nuscenes/nuscenes_map_infos_val.pkl \
        [--classes divider ped_crossing boundary] [--thresholds 0.5 1.0 1.5] [--out m.json]

PREDS (.json, or .pkl holding only builtins and numpy arrays) is either our format
(docs/evaluation.md)::

    dict(meta=dict(classes=[...]),           # names of the prediction labels
         results=[dict(token=str, vectors=[(Ni, 2)] or (K, P, 2), scores=(K,), labels=(K,))])

(``polylines`` is accepted for ``vectors``: ``tools/test.py --out`` writes that), or MapTR's
submission json: ``results`` maps each sample token (or lists dicts with ``sample_token``) to
``dict(vectors=[dict(pts=[[x, y], ...], cls_name=str or type=int, confidence_level=float)])``.
Results that carry ``answers=[dict(type, answer)]`` (``tools/test.py --out`` of a model that
answers questions) also get the answer metrics of ``MapQAMetric`` as ``qa/<key>``.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
from typing import Any, Sequence

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import mmengine  # noqa: E402
import numpy as np  # noqa: E402

from projects.MapLLaVA.mapllava.engine import cli  # noqa: E402
from projects.MapLLaVA.mapllava.engine.dump_predictions import FORMAT_NAME  # noqa: E402
from projects.MapLLaVA.mapllava.evaluation.chamfer_map_metric import (  # noqa: E402
    MAP_CLASSES,
    evaluate_map_predictions,
)
from projects.MapLLaVA.mapllava.evaluation.map_qa_metric import (  # noqa: E402
    evaluate_qa_predictions,
)
from projects.MapLLaVA.mapllava.utils.safe_pickle import load_data_file  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Chamfer-distance mAP of saved map predictions')
    parser.add_argument('preds', help='predictions .json or .pkl (format: docs/evaluation.md)')
    parser.add_argument('--ann-file', required=True, help='info .pkl with the GT map_annos')
    parser.add_argument('--classes', nargs='+', default=list(MAP_CLASSES),
                        help='classes to evaluate, by name')
    parser.add_argument('--thresholds', nargs='+', type=float, default=[0.5, 1.0, 1.5],
                        help='chamfer thresholds in metres')
    parser.add_argument('--num-sample-pts', type=int, default=100)
    parser.add_argument('--buffer', type=float, default=2.0)
    parser.add_argument('--out', help='write the metrics to this .json')
    return parser.parse_args(argv)


def load_predictions(path: str, classes: Sequence[str]) -> tuple[list[dict], tuple[str, ...]]:
    """Read a predictions file into ``[dict(token, vectors, scores, labels)]`` + label names."""
    data = load_data_file(path)  # a .pkl may hold only builtins and numpy arrays
    if not isinstance(data, dict) or 'results' not in data:
        raise ValueError(f'{path}: expected a dict with a "results" key (docs/evaluation.md)')
    meta = data.get('meta') or {}
    names = tuple(meta.get('classes') or ()) if isinstance(meta, dict) else ()
    results = data['results']
    if isinstance(results, dict):  # MapTR: token -> dict(vectors=[...])
        results = [dict(entry, sample_token=tok) for tok, entry in results.items()]
    if results and _is_maptr(results[0]):
        return _from_maptr(results, names or tuple(classes))
    ours = isinstance(meta, dict) and meta.get('format') == FORMAT_NAME
    out = []
    for i, res in enumerate(results):
        if ours:  # json of tools/test.py --out: the pickle's dtypes again
            res = dict(res, **{k: np.asarray(res[k], dt) for k, dt in _OUR_DTYPES if k in res})
        if 'vectors' not in res and 'polylines' in res:
            res = dict(res, vectors=res['polylines'])
        if 'token' not in res:
            raise ValueError(f'{path}: results[{i}] has no "token" (keys: {sorted(res)})')
        out.append(res)
    return out, names or tuple(classes)


_OUR_DTYPES = (('polylines', np.float32), ('scores', np.float32), ('labels', np.int64))


def _is_maptr(entry: Any) -> bool:
    vecs = entry.get('vectors') if isinstance(entry, dict) else None
    return ('sample_token' in entry and isinstance(vecs, (list, tuple))
            and (not vecs or isinstance(vecs[0], dict)))


def _from_maptr(results: list[dict], names: tuple[str, ...]) -> tuple[list[dict], tuple]:
    out = []
    for res in results:
        token = res['sample_token']
        vecs, scores, labels = [], [], []
        for i, v in enumerate(res['vectors']):
            if 'cls_name' in v:
                if v['cls_name'] not in names:
                    raise ValueError(f'prediction {token!r}: vectors[{i}] has unknown class '
                                     f'{v["cls_name"]!r} (classes: {list(names)})')
                labels.append(names.index(v['cls_name']))
            else:
                labels.append(int(v['type']))
            vecs.append(np.asarray(v['pts'], dtype=np.float64).reshape(-1, 2))
            scores.append(float(v['confidence_level']))
        out.append(dict(token=token, vectors=vecs, scores=np.asarray(scores),
                        labels=np.asarray(labels, dtype=np.int64)))
    return out, names


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    results, pred_classes = load_predictions(args.preds, args.classes)
    metrics, _ = evaluate_map_predictions(results, args.ann_file, args.classes, pred_classes,
                                          args.thresholds, args.num_sample_pts, args.buffer)
    answered = [dict(token=r['token'], answers=r['answers']) for r in results if r.get('answers')]
    if answered:  # a model that talks: its answers (tools/test.py --out) scored as MapQAMetric
        qa, _ = evaluate_qa_predictions(answered, args.ann_file)
        metrics.update({f'qa/{k}': v for k, v in qa.items()})
    print(json.dumps(metrics, indent=2))
    if args.out:
        mmengine.mkdir_or_exist(osp.dirname(osp.abspath(args.out)))
        with open(args.out, 'w') as f:
            json.dump(metrics, f, indent=2)
    return metrics


if __name__ == '__main__':
    cli.run_cli(main)
