"""The ridge read-out of map answers from scene tokens (evaluation/scene_probe.py) and
tools/analysis_tools/probe_scene_tokens.py on the tiny model."""
import json

import numpy as np
import pytest
from test_serve_chat import _checkpoint
from test_tiny_end_to_end import write_tiny_config
from test_training_tools import _tool

from projects.MapLLaVA.mapllava.evaluation import majority_baseline
from projects.MapLLaVA.mapllava.evaluation.scene_probe import (
    fit_ridge,
    leave_group_out,
    probe_answers,
)

pytestmark = pytest.mark.usefixtures('single_thread')


def test_leave_group_out_equals_refitting_without_the_group():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 40)), rng.normal(size=(24, 3))
    groups = np.repeat(np.arange(8), 3)
    lam = 5.
    closed = leave_group_out(x, y, lam, groups)
    for g in range(8):
        held, kept = groups == g, groups != g
        weights = np.linalg.solve(x[kept] @ x[kept].T + lam * np.eye(kept.sum()), y[kept])
        np.testing.assert_allclose(closed[held], x[held] @ x[kept].T @ weights, atol=1e-9)
    with pytest.raises(ValueError, match='groups: 3 entries for 24 samples'):
        leave_group_out(x, y, lam, [0, 1, 2])


def test_fit_ridge_prefers_the_ridge_that_generalises():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 50)) * np.r_[4., np.ones(49)]
    y = (x[:, 0] > 0).astype(int)  # one informative dimension among noise
    y[:4] = 1 - y[:4]  # and a few wrong labels, which a vanishing ridge interpolates
    # held-out on train picks 1: 1e-6 interpolates the noise, 1e6 x the mean diagonal shrinks
    # every score to the prior (about 50/50 here); unseen samples: 0.82 / 0.84 / 0.48 right
    ridge, weights, mean = fit_ridge(x, np.eye(2)[y], (1e-6, 1., 1e6), classify=True)
    assert ridge == 1.
    test = rng.normal(size=(200, 50)) * np.r_[4., np.ones(49)]
    acc = ((test @ x.T @ weights + mean).argmax(1) == (test[:, 0] > 0)).mean()
    assert acc > 0.8
    with pytest.raises(ValueError, match='at least 2 train samples'):
        fit_ridge(x[:1], np.eye(2)[y[:1]], (1.,), classify=True)


def _qa(side, distance):
    return {'nearest_boundary_side': dict(value=side),
            'nearest_boundary_distance': dict(value=distance),
            'count_divider': dict(value=3)}


def test_probe_answers_reads_a_linearly_encoded_fact():
    """Side is the sign of feature 0, distance feature 1 (+ noise dims): the read-out must
    answer both on unseen samples; a type with one train answer gets that answer."""
    rng = np.random.default_rng(2)

    def split(n):
        x = rng.normal(size=(n, 6))
        qa = [_qa('left' if f[0] < 0 else 'right', 2. + abs(f[1])) for f in x]
        return x, qa

    train_x, train_qa = split(80)
    val_x, val_qa = split(40)
    results, ridges = probe_answers(train_x, train_qa, val_x, val_qa,
                                    [f't{i}' for i in range(40)])
    assert set(ridges) == {'nearest_boundary_side', 'nearest_boundary_distance'}
    answers = [{a['type']: a['answer'] for a in r['answers']} for r in results]
    side = np.mean([a['nearest_boundary_side'] == q['nearest_boundary_side']['value']
                    for a, q in zip(answers, val_qa)])
    assert side >= 0.9
    # canonical answers round to whole metres, and |f1| is not linear: a loose bound
    err = np.mean([abs(float(a['nearest_boundary_distance'][:-2])
                       - q['nearest_boundary_distance']['value']) for a, q in zip(answers, val_qa)])
    assert err < 0.8
    assert {a['count_divider'] for a in answers} == {'3'}
    with pytest.raises(ValueError, match='one entry per sample'):
        probe_answers(train_x, train_qa[:-1], val_x, val_qa, ['t'] * 40)


def test_probe_tool_on_the_tiny_model(synthetic_root, tmp_path, capsys):
    cfg = write_tiny_config(tmp_path / 'tiny.py', synthetic_root, str(tmp_path / 'work'))
    ckpt = _checkpoint(cfg, str(tmp_path / 'tiny.pth'))
    out = tmp_path / 'probe' / 'probe.json'
    metrics = _tool('analysis_tools/probe_scene_tokens').main([cfg, ckpt, '--out', str(out)])
    written = json.loads(out.read_text())
    assert set(written) == {'baseline', 'readout', 'balanced'}
    for name, values in written.items():
        assert values == pytest.approx(metrics[name], nan_ok=True)
    train = f'{synthetic_root}/nuscenes_map_infos_train.pkl'
    val = f'{synthetic_root}/nuscenes_map_infos_val.pkl'
    assert metrics['baseline'] == pytest.approx(majority_baseline(train, val)[0], nan_ok=True)
    for name in ('readout', 'balanced'):
        assert set(metrics[name]) == set(metrics['baseline'])
    printed = capsys.readouterr().out
    assert 'scene tokens: 4096 features' in printed
    assert 'acc_nearest_boundary_side' in printed
