"""Answer the map questions from a model's predicted vector map, beside the LLM's own answers.

    python tools/analysis_tools/qa_from_map.py PREDS.json --ann-file VAL.pkl \
        [--train-file TRAIN.pkl] [--score-thr 0.3] [--out m.json] [--answers-out a.json]

PREDS is what ``tools/test.py CONFIG CKPT --out PREDS.json`` writes. The GT answers are
``build_map_qa`` of the GT ``map_annos``; this applies the same rules to the predicted
polylines whose score is at least ``--score-thr`` and scores those answers as ``MapQAMetric``
does (a type the predicted map cannot answer, e.g. the boundary side with no boundary
predicted, counts as unparseable). Printed beside the LLM's answers from the same file (and
the majority baseline with ``--train-file``), it tells where a wrong answer is lost: a type
the map read-out gets and the LLM does not is in what the map head reads but not in what the
LLM says; a type both miss is wrong in the map too. ``agree_<type>``: how often the LLM's
answer is the map read-out's (exact-match types). A diagnostic, not an answer the model gives.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
from collections.abc import Sequence

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402

from projects.MapLLaVA.mapllava.datasets.map_qa import (  # noqa: E402
    QA_KINDS,
    build_map_qa,
    parse_answer,
)
from projects.MapLLaVA.mapllava.engine import cli  # noqa: E402
from projects.MapLLaVA.mapllava.engine.runner_conventions import atomic_write  # noqa: E402
from projects.MapLLaVA.mapllava.evaluation.chamfer_map_metric import MAP_CLASSES  # noqa: E402
from projects.MapLLaVA.mapllava.evaluation.map_qa_metric import (  # noqa: E402
    evaluate_qa_predictions,
    load_language,
    majority_baseline,
)
from tools.eval_map import load_predictions  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('preds', help='predictions .json or .pkl (tools/test.py --out)')
    parser.add_argument('--ann-file', required=True,
                        help='info .pkl with the GT language targets the answers are scored on')
    parser.add_argument('--train-file', help='info .pkl of the train split: adds the majority '
                        'baseline (tools/analysis_tools/qa_stats.py)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='predicted instances scoring below this are not part of the map')
    parser.add_argument('--classes', nargs='+', default=list(MAP_CLASSES),
                        help='label names of the predictions when the file does not name them')
    parser.add_argument('--out', help='write the metrics of every column to this .json')
    parser.add_argument('--answers-out',
                        help="write the map read-out's answers per sample to this .json "
                        "(score_thr, results: [{token, answers: [{type, answer, gt}]}]), to "
                        'see which samples a type is lost on')
    return parser.parse_args(argv)


def map_answers(result: dict, classes: Sequence[str], score_thr: float) -> dict[str, str]:
    """type -> the answer ``build_map_qa`` gives for one sample's predicted map."""
    scores = np.asarray(result['scores'], dtype=np.float64).reshape(-1)
    labels = np.asarray(result['labels']).reshape(-1)
    vectors = result['vectors']
    if not len(scores) == len(labels) == len(vectors):
        raise ValueError(f'prediction {result["token"]!r}: {len(vectors)} polylines, '
                         f'{len(scores)} scores and {len(labels)} labels')
    keep = np.flatnonzero(scores >= score_thr)
    annos = dict(labels=labels[keep], vectors=[np.asarray(vectors[i]) for i in keep])
    return {qa['type']: qa['answer'] for qa in build_map_qa(annos, classes)['qa']}


def read_out(results: Sequence[dict], ann_file: str, classes: Sequence[str],
             score_thr: float) -> list[dict]:
    """``dict(token, answers)`` of the map read-out for every question ``ann_file`` asks of a
    predicted sample ('' where the predicted map gives that type no answer)."""
    gt = load_language(ann_file)
    out = []
    for res in results:
        asked = gt.get(res['token'])
        if not asked:  # not in the file or no targets: evaluate_qa_predictions names it
            out.append(dict(token=res['token'], answers=[]))
            continue
        given = map_answers(res, classes, score_thr)
        out.append(dict(token=res['token'],
                        answers=[dict(type=t, answer=given.get(t, '')) for t in asked]))
    return out


def agreement(llm: Sequence[dict], from_map: Sequence[dict]) -> dict[str, float]:
    """``agree_<type>``: the fraction of the LLM's exact-match answers whose parsed value is
    the map read-out's for the same question."""
    by_token = {r['token']: {a['type']: a['answer'] for a in r['answers']} for r in from_map}
    same: dict[str, list[bool]] = {}
    for res in llm:
        mapped = by_token.get(res['token'], {})
        for ans in res['answers']:
            qtype = ans['type']
            if QA_KINDS.get(qtype) in (None, 'metres') or qtype not in mapped:
                continue
            value = parse_answer(qtype, ans['answer'])
            same.setdefault(qtype, []).append(
                value is not None and value == parse_answer(qtype, mapped[qtype]))
    return {f'agree_{t}': float(np.mean(same[t])) for t in QA_KINDS if t in same}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    results, names = load_predictions(args.preds, args.classes)
    columns: dict[str, dict[str, float]] = {}
    if args.train_file:
        columns['baseline'] = majority_baseline(args.train_file, args.ann_file,
                                                logger='silent')[0]
    llm = [dict(token=r['token'], answers=r['answers']) for r in results if r.get('answers')]
    if llm:
        columns['llm'] = evaluate_qa_predictions(llm, args.ann_file, logger='silent')[0]
    from_map = read_out(results, args.ann_file, names, args.score_thr)
    columns['map'] = evaluate_qa_predictions(from_map, args.ann_file, logger='silent')[0]
    if llm:
        columns['map'].update(agreement(llm, from_map))
    print(f'{len(results)} samples of {args.preds}; map read-out: instances scoring '
          f'>= {args.score_thr}')
    print(f'{"metric":32s} ' + ' '.join(f'{n:>9s}' for n in columns))
    for key in (k for k in columns['map'] if not k.startswith(('parsed_', 'agree_'))):
        print(f'{key:32s} ' + ' '.join(f'{c.get(key, float("nan")):9.4f}'
                                       for c in columns.values()))
    agree = {k: v for k, v in columns['map'].items() if k.startswith('agree_')}
    if agree:
        print('the LLM says what the map read-out says: ' +
              ', '.join(f'{k[len("agree_"):]} {v:.4f}' for k, v in agree.items()))
    if args.out:
        _write_json(args.out, columns)
    if args.answers_out:
        _write_json(args.answers_out, dict(score_thr=args.score_thr,
                                           results=per_sample(from_map, llm, args.ann_file)))
    return columns


def per_sample(from_map: Sequence[dict], llm: Sequence[dict], ann_file: str) -> list[dict]:
    """``dict(token, answers=[dict(type, gt, map, llm)])`` per sample: which samples a type
    is lost on, and whether the LLM's answer there is the map's (``llm`` is None where the
    predictions hold no answer)."""
    gt = load_language(ann_file)
    said = {r['token']: {a['type']: a['answer'] for a in r['answers']} for r in llm}
    return [dict(token=r['token'], answers=[
        dict(type=a['type'], gt=gt[r['token']][a['type']]['answer'], map=a['answer'],
             llm=said.get(r['token'], {}).get(a['type'])) for a in r['answers']])
        for r in from_map]


def _write_json(path: str, obj) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    atomic_write(path, json.dumps(obj, indent=1).encode())


if __name__ == '__main__':
    cli.run_cli(main)
