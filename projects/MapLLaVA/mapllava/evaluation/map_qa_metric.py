"""mmengine metric for the answers the LLM gives to map questions, and the majority baseline.

Answers are parsed with ``datasets/map_qa.parse_answer`` and compared with the typed ``value``
of the GT question in the info file (``language``, keyed by sample token), so the scores do not
depend on how a model spells a correct answer. Per question type:

- count / yes-no / category kinds: ``acc_<type>``, exact match of the parsed value (an
  unparseable answer is wrong);
- metres kind: ``mae_<type>``, mean absolute error in metres over the parseable answers (NaN
  when none is), against the GT distance to 1 cm (the canonical answer rounds to whole metres,
  so a perfect model scores up to 0.25 m on average);
- every type: ``parsed_<type>``, the fraction of parseable answers.

``accuracy`` is the fraction of all exact-match (non-metres) questions answered correctly.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from mmdet3d.registry import METRICS
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from terminaltables import AsciiTable

from ..datasets.map_qa import QA_KINDS, QA_VERSION, format_answer, parse_answer
from ..utils.safe_pickle import load_data_file


def score_answers(answers: Iterable[tuple[str, str, Any]]) -> dict[str, dict]:
    """Per-type tallies of ``(type, answer, gt_value)`` triples.

    Returns:
        type -> ``dict(kind, n, parsed, correct, abs_err)`` for the types that occur, in
        ``QA_KINDS`` order (``abs_err``: the summed error of the parsed metres answers).
    """
    stats: dict[str, dict] = {}
    for qtype, text, gt in answers:
        pred = parse_answer(qtype, text)
        s = stats.setdefault(qtype, dict(kind=QA_KINDS[qtype], n=0, parsed=0, correct=0,
                                         abs_err=0.))
        s['n'] += 1
        if pred is None:
            continue
        s['parsed'] += 1
        if s['kind'] == 'metres':
            s['abs_err'] += abs(float(pred) - float(gt))
        else:
            s['correct'] += int(pred == gt)
    return {t: stats[t] for t in QA_KINDS if t in stats}


def qa_metrics(stats: dict[str, dict]) -> dict[str, float]:
    """``acc_<type>`` / ``mae_<type>``, ``parsed_<type>`` and ``accuracy`` of tallies."""
    out: dict[str, float] = {}
    n_exact = correct = 0
    for qtype, s in stats.items():
        if s['kind'] == 'metres':
            out[f'mae_{qtype}'] = s['abs_err'] / s['parsed'] if s['parsed'] else math.nan
        else:
            out[f'acc_{qtype}'] = s['correct'] / s['n']
            n_exact += s['n']
            correct += s['correct']
        out[f'parsed_{qtype}'] = s['parsed'] / s['n']
    out['accuracy'] = correct / n_exact if n_exact else math.nan
    return out


def format_qa_table(stats: dict[str, dict], title: str = 'map question answering') -> str:
    """Per-type table: questions, parsed fraction, accuracy or MAE."""
    rows = [['type', 'kind', 'questions', 'parsed', 'acc', 'MAE (m)']]
    for qtype, s in stats.items():
        metres = s['kind'] == 'metres'
        mae = f'{s["abs_err"] / s["parsed"]:.3f}' if metres and s['parsed'] else '-'
        rows.append([qtype, s['kind'], str(s['n']), f'{s["parsed"] / s["n"]:.4f}',
                     '-' if metres else f'{s["correct"] / s["n"]:.4f}', mae])
    overall = qa_metrics(stats)['accuracy']
    exact = [s for s in stats.values() if s['kind'] != 'metres']
    rows.append(['accuracy (exact match)', '', str(sum(s['n'] for s in exact)),
                 '', '-' if math.isnan(overall) else f'{overall:.4f}', ''])
    table = AsciiTable(rows, title=title)
    table.inner_footing_row_border = True
    return table.table


def load_language(ann_file: str) -> dict[str, dict[str, dict]]:
    """token -> question type -> GT question of an info file's ``language`` targets."""
    infos = load_data_file(ann_file)  # .pkl: builtins and numpy arrays only
    if not isinstance(infos, dict) or 'data_list' not in infos:
        raise ValueError(f'{ann_file}: expected dict(metainfo=..., data_list=[...])')
    out = {}
    for info in infos['data_list']:
        language = info.get('language')
        if language is None:
            out[info['token']] = None
            continue
        if language.get('qa_version') != QA_VERSION:
            raise ValueError(
                f'{ann_file}: sample {info["token"]!r} has language targets of qa_version '
                f'{language.get("qa_version")}, this code scores version {QA_VERSION}: '
                'recompute them with tools/create_data.py ... --language-only')
        out[info['token']] = {qa['type']: qa for qa in language['qa']}
    return out


def evaluate_qa_predictions(results: Sequence[dict], ann_file: str,
                            logger: str = 'current') -> tuple[dict[str, float], dict[str, dict]]:
    """Score ``dict(token, answers=[dict(type, answer)])`` entries against ``ann_file``.

    Only the questions a sample was asked are scored; questions of the info without an answer
    are not counted. Returns ``(metrics, per-type tallies)``.
    """
    gt = load_language(ann_file)
    seen: set[str] = set()
    triples = []
    for res in results:
        token = res.get('token')
        if token not in gt:
            raise ValueError(f'answers for token {token!r}, which is not in {ann_file}')
        if token in seen:
            raise ValueError(f'two answer entries for token {token!r}')
        seen.add(token)
        questions = gt[token]
        if questions is None:
            raise ValueError(f'sample {token!r} in {ann_file} has no language targets: add them '
                             'with tools/create_data.py ... --language-only')
        asked: set[str] = set()
        for ans in res['answers']:
            for key in ('type', 'answer'):
                if key not in ans:
                    raise ValueError(f'sample {token!r}: an answer has no {key!r} '
                                     f'(keys: {sorted(ans)})')
            qtype = ans['type']
            if qtype not in questions:
                raise ValueError(f'sample {token!r}: answer to question type {qtype!r}, which '
                                 f'{ann_file} does not ask this sample (asks {list(questions)})')
            if qtype in asked:
                raise ValueError(f'sample {token!r}: two answers to question type {qtype!r}')
            asked.add(qtype)
            triples.append((qtype, ans['answer'], questions[qtype]['value']))
    missing = sum(1 for token, qs in gt.items() if qs is not None and token not in seen)
    if missing:
        print_log(f'MapQAMetric: {missing} of the {len(gt)} samples in {ann_file} have no '
                  'answer entry and are not evaluated', logger=logger, level=logging.WARNING)
    stats = score_answers(triples)
    print_log('\n' + format_qa_table(stats), logger=logger)
    return qa_metrics(stats), stats


def answer_histogram(ann_file: str) -> dict[str, Counter]:
    """type -> how often each answer text is the GT on a split (types in ``QA_KINDS`` order)."""
    hist: dict[str, Counter] = {}
    for questions in load_language(ann_file).values():
        for qtype, qa in (questions or {}).items():
            hist.setdefault(qtype, Counter())[qa['answer']] += 1
    return {t: hist[t] for t in QA_KINDS if t in hist}


def majority_answers(ann_file: str) -> dict[str, str]:
    """The constant answer per type a model that ignores the input would learn on a split.

    Exact-match kinds: the most frequent answer text (ties: the smallest text). Metres: the
    median value, written as a canonical answer (the constant that minimises the MAE).
    """
    values: dict[str, list] = {}
    for questions in load_language(ann_file).values():
        for qtype, qa in (questions or {}).items():
            values.setdefault(qtype, []).append(qa)
    out = {}
    for qtype in (t for t in QA_KINDS if t in values):
        if QA_KINDS[qtype] == 'metres':
            out[qtype] = format_answer(qtype, float(np.median([qa['value']
                                                               for qa in values[qtype]])))
        else:
            counts = Counter(qa['answer'] for qa in values[qtype])
            out[qtype] = min(counts, key=lambda a: (-counts[a], a))
    return out


def majority_baseline(train_file: str, val_file: str, logger: str = 'current'
                      ) -> tuple[dict[str, float], dict[str, str]]:
    """Scores of the ``majority_answers`` of ``train_file`` answering every question of
    ``val_file`` (the honest baseline: nothing of the evaluated split is used).

    Types never asked on the train split get no answer (so they are not scored).

    Returns:
        ``(metrics, answers)``: the metrics of ``evaluate_qa_predictions`` and the constants.
    """
    answers = majority_answers(train_file)
    results = [dict(token=token, answers=[dict(type=t, answer=answers[t])
                                          for t in questions if t in answers])
               for token, questions in load_language(val_file).items() if questions is not None]
    metrics, _ = evaluate_qa_predictions(results, val_file, logger=logger)
    return metrics, answers


@METRICS.register_module()
class MapQAMetric(BaseMetric):
    """Accuracy / MAE of the answers to map questions (``evaluate_qa_predictions``).

    Each data sample carries ``pred_answers``: a list of ``dict(type, question, answer)``
    (the generated text of the questions it was asked); the GT is the ``language`` of the
    sample's info in ``ann_file``, found by ``metainfo['token']``.

    Args:
        ann_file: info ``.pkl`` of the evaluated split, with language targets.
    """

    default_prefix = 'NuscMap_qa'

    def __init__(self, ann_file: str, collect_device: str = 'cpu',
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file = ann_file

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Keep each sample's answers as plain Python (picklable, cheap to gather)."""
        for sample in data_samples:
            token = sample.get('token', sample.get('metainfo', {}).get('token'))
            if token is None:
                raise ValueError('data sample without a "token" in its metainfo')
            if 'pred_answers' not in sample:
                raise ValueError(f'data sample {token!r} has no "pred_answers" (keys: '
                                 f'{sorted(sample)})')
            self.results.append(dict(token=token, answers=[
                {k: a[k] for k in ('type', 'answer') if k in a}
                for a in sample['pred_answers']]))

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics, _ = evaluate_qa_predictions(results, self.ann_file)
        return metrics
