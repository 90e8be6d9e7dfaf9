"""Linear read-out of the map answers from the scene tokens: is a fact in what the LLM reads?

When the LLM answers a question type no better than the majority baseline, either the scene
tokens do not hold the fact (the BEV encoder / Q-Former lose it) or the LLM has not learned
to read it. A ridge read-out of the flattened scene tokens, fitted on the train split and
scored on val with ``MapQAMetric``'s own scoring, tells the two apart: it answers each question
type from the same tokens with a linear map and nothing else.

Ridge regression in its dual (kernel) form, on train-standardised features (the tokens have
far more dimensions than a split has samples): one-vs-rest targets for the exact-match kinds
(count, yes/no, category: the argmax over the train answers), the value for metres. The ridge
strength is chosen per type by closed-form leave-one-scene-out on the train split, so nothing
of val is used to fit or to choose.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..datasets.map_qa import QA_KINDS, format_answer

#: ridge strengths tried per question type (relative to the mean diagonal of the kernel)
DEFAULT_RIDGES = (1e-3, 1e-2, 1e-1, 1., 10., 100.)


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Features centred and scaled by the train split's statistics (constant ones: 0)."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.)
    return [(x - mean) / std for x in (train, *others)]


def leave_group_out(train: np.ndarray, targets: np.ndarray, lam: float,
                    groups: Sequence | None = None) -> np.ndarray:
    """Held-out ridge predictions (no intercept) of ``targets`` (n, k), each group left out.

    In closed form: with the hat matrix ``H = K (K + λI)^-1`` of the kernel ``K = X Xᵀ``, the
    residuals of a left-out group ``g`` are ``e_g = (I - H_gg)^-1 (y_g - ŷ_g)``, so the n refits
    cost one solve.
    """
    groups = np.arange(len(train)) if groups is None else np.asarray(groups)
    if len(groups) != len(train):
        raise ValueError(f'groups: {len(groups)} entries for {len(train)} samples')
    kernel = train @ train.T
    hat = np.linalg.solve(kernel + lam * np.eye(len(kernel)), kernel).T  # symmetric K, (K+λI)
    residual = targets - hat @ targets
    out = np.empty_like(targets, dtype=np.float64)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        held_out = np.linalg.lstsq(np.eye(len(idx)) - hat[np.ix_(idx, idx)], residual[idx],
                                   rcond=None)[0]
        out[idx] = targets[idx] - held_out
    return out


def fit_ridge(train: np.ndarray, targets: np.ndarray, ridges: Sequence[float],
              classify: bool, groups: Sequence | None = None, intercept: bool = True
              ) -> tuple[float, np.ndarray, np.ndarray]:
    """Dual ridge fit of ``targets`` (n, k) on ``train`` (n, d), its strength chosen by
    :func:`leave_group_out`.

    Samples of one scene are near-duplicates, so ``groups`` (e.g. scene tokens; default: every
    sample its own) are left out together. Targets are centred unless ``intercept`` is off
    (the mean is not refitted per group). The chosen strength has the fewest held-out errors
    (``classify``: argmax over the columns) or the lowest squared error; ties go to the
    stronger ridge.

    Returns:
        ``(chosen ridge (x the kernel's mean diagonal), dual weights (n, k), target mean
        (k,))``: predict with ``features @ train.T @ weights + mean``.
    """
    if len(train) < 2:
        raise ValueError(f'a ridge read-out needs at least 2 train samples, got {len(train)}')
    scale = max(float(np.einsum('ij,ij->', train, train)) / len(train), 1e-12)
    mean = targets.mean(0) if intercept else np.zeros(targets.shape[1])
    centred = targets - mean
    best = None
    for ridge in sorted(ridges, reverse=True):
        held_out = leave_group_out(train, centred, float(ridge) * scale, groups) + mean
        if classify:
            err = float(np.mean(held_out.argmax(1) != targets.argmax(1)))
        else:
            err = float(np.mean((held_out - targets) ** 2))
        if best is None or err < best[0]:
            best = (err, float(ridge))
    ridge = best[1]
    kernel = train @ train.T
    weights = np.linalg.solve(kernel + ridge * scale * np.eye(len(kernel)), centred)
    return ridge, weights, mean


def probe_answers(train_feats: np.ndarray, train_qa: Sequence[Mapping[str, Any]],
                  val_feats: np.ndarray, val_qa: Sequence[Mapping[str, Any]],
                  val_tokens: Sequence[str], ridges: Sequence[float] = DEFAULT_RIDGES,
                  train_groups: Sequence | None = None, balanced: bool = False
                  ) -> tuple[list[dict], dict[str, float]]:
    """Answers of the ridge read-out to every val question, as ``MapQAMetric`` scores them.

    Args:
        train_feats, val_feats: ``(n, d)`` features per sample (e.g. flattened scene tokens).
        train_qa, val_qa: per sample, question type -> GT question (``value`` typed), as
            ``map_qa_metric.load_language`` gives them.
        val_tokens: the val samples' tokens.
        ridges: the strengths tried (x the kernel's mean diagonal).
        train_groups: per train sample, the group left out with it when choosing the
            strength (its scene token); default: none.
        balanced: exact-match kinds without an intercept. Far from the train samples (the
            val scenes are other scenes) the ridge scores shrink to the train answer
            frequencies, so a rare answer must be read out very clearly to win; balanced,
            every answer's score shrinks to 0 alike and the argmax follows the tokens only.

    Returns:
        ``([dict(token, answers=[dict(type, answer)])], {type: chosen ridge})``; types never
        asked on train get no answer, a type with one train answer always gets that one.
    """
    if len(train_feats) != len(train_qa) or len(val_feats) != len(val_qa) \
            or len(val_qa) != len(val_tokens):
        raise ValueError('features, questions and tokens must have one entry per sample: got '
                         f'train {len(train_feats)}/{len(train_qa)}, val {len(val_feats)}/'
                         f'{len(val_qa)}/{len(val_tokens)}')
    train_x, val_x = standardise(np.asarray(train_feats, np.float64),
                                 np.asarray(val_feats, np.float64))
    answers: list[list[dict]] = [[] for _ in val_tokens]
    chosen: dict[str, float] = {}
    for qtype in QA_KINDS:
        rows = [i for i, qa in enumerate(train_qa) if qtype in qa]
        asked = [i for i, qa in enumerate(val_qa) if qtype in qa]
        if not rows or not asked:
            continue
        values = [train_qa[i][qtype]['value'] for i in rows]
        if QA_KINDS[qtype] == 'metres':
            targets = np.asarray(values, np.float64)[:, None]
        else:
            labels = sorted(set(values), key=repr)
            targets = np.eye(len(labels))[[labels.index(v) for v in values]]
        if len(rows) < 2 or targets.std(0).max() == 0:
            preds = np.repeat(targets.mean(0, keepdims=True), len(asked), 0)
        else:
            chosen[qtype], weights, mean = fit_ridge(
                train_x[rows], targets, ridges, classify=QA_KINDS[qtype] != 'metres',
                groups=None if train_groups is None else [train_groups[i] for i in rows],
                intercept=not balanced or QA_KINDS[qtype] == 'metres')
            preds = val_x[asked] @ train_x[rows].T @ weights + mean
        for i, pred in zip(asked, preds):
            value = (max(float(pred[0]), 0.) if QA_KINDS[qtype] == 'metres'
                     else labels[int(pred.argmax())])
            answers[i].append(dict(type=qtype, answer=format_answer(qtype, value)))
    return [dict(token=t, answers=a) for t, a in zip(val_tokens, answers)], chosen
