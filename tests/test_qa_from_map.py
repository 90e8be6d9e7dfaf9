"""tools/analysis_tools/qa_from_map.py: the map questions answered from a predicted map."""
import json
import re

import pytest
from test_map_qa import CLASSES, DIV, LEFT, RIGHT, STRAIGHT, line_x, write_infos
from test_training_tools import _tool

from projects.MapLLaVA.mapllava.datasets.map_gt import make_map_annos
from projects.MapLLaVA.mapllava.datasets.map_qa import build_map_qa
from projects.MapLLaVA.mapllava.engine.dump_predictions import FORMAT_NAME, FORMAT_VERSION


def _prediction(token, annos, answers, extra=()):
    """``tools/test.py --out`` record: ``annos``' instances at score 0.9 (20 points each, as
    the head predicts them) plus ``extra`` ``(label, vector, score)``."""
    items = [(int(lab), vec, 0.9) for lab, vec in zip(annos['labels'], annos['vectors'])]
    items += list(extra)
    pts = make_map_annos([i[0] for i in items], [i[1] for i in items])['vectors_resampled']
    return dict(token=token, polylines=pts.tolist(), scores=[i[2] for i in items],
                labels=[i[0] for i in items],
                answers=[dict(type=t, question='?', answer=a) for t, a in answers.items()])


def _gt_answers(annos):
    return {qa['type']: qa['answer'] for qa in build_map_qa(annos, CLASSES)['qa']}


@pytest.fixture
def split(tmp_path):
    train = write_infos(tmp_path / 'train.pkl', dict(a=STRAIGHT, b=STRAIGHT, c=LEFT))
    val = write_infos(tmp_path / 'val.pkl', dict(e=STRAIGHT, f=RIGHT))
    # e: the GT map, plus a low-scoring stray divider; f: the map of a left curve
    # (3 dividers where the GT has none in the ROI, the curve the wrong way)
    stray = [(DIV, line_x(0.), 0.1)]
    llm_f = dict(_gt_answers(RIGHT), road_curve='left')
    preds = dict(meta=dict(format=FORMAT_NAME, version=FORMAT_VERSION, classes=list(CLASSES)),
                 results=[_prediction('e', STRAIGHT, _gt_answers(STRAIGHT), stray),
                          _prediction('f', LEFT, llm_f)])
    path = tmp_path / 'preds.json'
    path.write_text(json.dumps(preds))
    return str(train), str(val), str(path)


def test_the_map_read_out_scores_the_predicted_map(split, tmp_path, capsys):
    train, val, preds = split
    out, per_sample = tmp_path / 'qa.json', tmp_path / 'answers.json'
    cols = _tool('analysis_tools/qa_from_map').main(
        [preds, '--ann-file', val, '--train-file', train, '--out', str(out),
         '--answers-out', str(per_sample)])
    assert json.loads(out.read_text()) == cols
    answers = json.loads(per_sample.read_text())
    assert answers['score_thr'] == 0.3
    curve = {r['token']: next(a for a in r['answers'] if a['type'] == 'road_curve')
             for r in answers['results']}
    assert curve == dict(e=dict(type='road_curve', gt='straight', map='straight', llm='straight'),
                         f=dict(type='road_curve', gt='right', map='left', llm='left'))
    assert set(cols) == {'baseline', 'llm', 'map'}
    assert [_gt_answers(STRAIGHT)['road_curve'], _gt_answers(RIGHT)['road_curve'],
            _gt_answers(LEFT)['road_curve']] == ['straight', 'right', 'left']
    # e's map is its GT (the stray divider scores under 0.3): every answer right; f's map
    # curves left and has 3 dividers in the ROI (GT: 0)
    assert cols['map']['acc_road_curve'] == 0.5
    assert cols['map']['acc_count_divider'] == 0.5
    assert cols['map']['acc_crossing_near'] == 0.5  # LEFT's crossing is 12 m behind
    assert cols['map']['mae_nearest_boundary_distance'] > 0  # f's nearest kerb is LEFT's
    # the LLM is right everywhere but f's curve, where it says what the wrong map says
    assert cols['llm']['acc_count_divider'] == 1.0 and cols['llm']['acc_road_curve'] == 0.5
    assert cols['map']['agree_road_curve'] == 1.0
    assert cols['map']['agree_count_divider'] == 0.5
    assert cols['baseline']['acc_road_curve'] == 0.5  # train majority 'straight'
    printed = capsys.readouterr().out
    assert re.search(r'acc_road_curve +0\.5000 +0\.5000 +0\.5000\n', printed)
    assert 'the LLM says what the map read-out says: count_divider 0.5000' in printed


def test_the_score_threshold_decides_what_is_map(split):
    _, val, preds = split
    cols = _tool('analysis_tools/qa_from_map').main([preds, '--ann-file', val,
                                                     '--score-thr', '0.05'])
    assert set(cols) == {'llm', 'map'}
    assert cols['map']['acc_count_divider'] == 0.0  # e: the stray divider makes 4


def test_a_prediction_for_an_unknown_sample_is_named(split, tmp_path):
    _, val, preds = split
    data = json.loads(open(preds).read())
    data['results'][1]['token'] = 'nope'
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="token 'nope', which is not in"):
        _tool('analysis_tools/qa_from_map').main([str(bad), '--ann-file', val])
    data['results'][1]['token'] = 'f'
    data['results'][0]['scores'] = data['results'][0]['scores'][:-1]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="prediction 'e': 8 polylines, 7 scores and 8 labels"):
        _tool('analysis_tools/qa_from_map').main([str(bad), '--ann-file', val])
