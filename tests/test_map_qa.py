"""Map questions from hand-made map GT, answer parsing, the QA metric and its baseline."""
from __future__ import annotations

import importlib.util
import math
import os
import pickle
import re

import numpy as np
import pytest
from mmdet3d.registry import METRICS

from projects.MapLLaVA.mapllava.datasets import NuScenesMapDataset
from projects.MapLLaVA.mapllava.datasets.map_gt import (
    add_language_targets,
    dump_atomic,
    make_map_annos,
)
from projects.MapLLaVA.mapllava.datasets.map_qa import (
    CATEGORIES,
    QA_KINDS,
    QA_VERSION,
    QUESTIONS,
    build_map_qa,
    format_answer,
    parse_answer,
)
from projects.MapLLaVA.mapllava.evaluation import (
    MapQAMetric,
    answer_histogram,
    evaluate_qa_predictions,
    majority_answers,
    majority_baseline,
)
from projects.MapLLaVA.mapllava.utils.safe_pickle import load_data_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ('divider', 'ped_crossing', 'boundary')
DIV, PED, BOUND = 0, 1, 2


def line_x(x: float, y0: float = -30., y1: float = 30.) -> np.ndarray:
    return np.array([(x, y) for y in np.linspace(y0, y1, 13)])


def rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Closed clockwise ring, as the converter writes crossings."""
    return np.array([(x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0)])


def arc(offset: float, radius: float = 40., sign: float = 1.) -> np.ndarray:
    """Line ``offset`` m right of a road that curves left (sign 1) or right (sign -1) with
    ``radius``, passing the ego heading +y; a vertex lies at the ego's level (y = 0)."""
    theta = np.linspace(-0.6, 0.8, 29)  # step 0.05: theta = 0 is a vertex
    r = radius + sign * offset
    return np.stack([sign * (-radius + r * np.cos(theta)), r * np.sin(theta)], 1)


def annos(*items: tuple[int, np.ndarray]) -> dict:
    return make_map_annos([lab for lab, _ in items], [v for _, v in items])


# straight road, crossing 12 m ahead, a cross street's divider, nearest kerb 4.6 m right
STRAIGHT = annos((DIV, line_x(-2.)), (DIV, line_x(2.)), (DIV, line_x(-5.5)),
                 (DIV, np.array([(-15., 25.), (15., 25.)])),
                 (PED, rect(-7., 4.6, 12., 16.)),
                 (BOUND, line_x(-7.)), (BOUND, line_x(4.6)))
# curving left, crossing 12 m behind, nearest kerb 7.5 m left (rounds half up to 8 m)
LEFT = annos((DIV, arc(-1.75)), (DIV, arc(1.75)), (DIV, arc(-5.25)),
             (PED, rect(-7., 9., -16., -12.)),
             (BOUND, arc(-7.5)), (BOUND, arc(9.)))
# curving right, no dividers (the boundaries decide), crossing 25 m behind; a divider
# outside the ROI is not counted
RIGHT = annos((DIV, line_x(20.)), (PED, rect(-7., 9., -29., -25.)),
              (BOUND, arc(-3.2, sign=-1.)), (BOUND, arc(9., sign=-1.)),
              (BOUND, arc(12., sign=-1.)))
EMPTY = annos()


def answers(qa: dict) -> dict:
    return {q['type']: (q['answer'], q['value']) for q in qa['qa']}


def test_straight_road_answers():
    qa = build_map_qa(STRAIGHT, CLASSES)
    assert qa['qa_version'] == QA_VERSION == 1
    assert answers(qa) == {
        'count_divider': ('4', 4), 'count_boundary': ('2', 2),
        'crossing_near': ('yes', True), 'crossing_ahead': ('yes', True),
        'crossing_distance': ('12 m', 12.0), 'road_curve': ('straight', 'straight'),
        'nearest_boundary_side': ('right', 'right'),
        'nearest_boundary_distance': ('5 m', 4.6)}
    assert [q['type'] for q in qa['qa']] == list(QA_KINDS)
    assert all(q['question'] == QUESTIONS[q['type']] for q in qa['qa'])
    assert qa['description'] == '4 dividers, 2 boundaries, crossing 12 m ahead, road goes straight.'
    assert all(type(q['value']) is {'count': int, 'yesno': bool, 'metres': float,
                                     'category': str}[QA_KINDS[q['type']]] for q in qa['qa'])


def test_curves_crossings_behind_and_empty_map():
    assert answers(build_map_qa(LEFT, CLASSES)) == {
        'count_divider': ('3', 3), 'count_boundary': ('2', 2),
        'crossing_near': ('yes', True), 'crossing_ahead': ('no', False),
        'road_curve': ('left', 'left'), 'nearest_boundary_side': ('left', 'left'),
        'nearest_boundary_distance': ('8 m', 7.5)}
    right = build_map_qa(RIGHT, CLASSES)
    assert answers(right) == {
        'count_divider': ('0', 0), 'count_boundary': ('3', 3),
        'crossing_near': ('no', False), 'crossing_ahead': ('no', False),
        'road_curve': ('right', 'right'), 'nearest_boundary_side': ('left', 'left'),
        'nearest_boundary_distance': ('3 m', 3.2)}
    assert right['description'] == '0 dividers, 3 boundaries, no crossing ahead, road curves right.'
    empty = build_map_qa(EMPTY, CLASSES)
    assert answers(empty) == {'count_divider': ('0', 0), 'count_boundary': ('0', 0),
                              'crossing_near': ('no', False), 'crossing_ahead': ('no', False)}
    assert empty['description'] == '0 dividers, 0 boundaries, no crossing ahead.'


def test_labels_follow_class_names_and_roi():
    # the same GT labelled with a 4-class list in another order gives the same answers
    classes = ('boundary', 'centerline', 'divider', 'ped_crossing')
    relabel = {DIV: 2, PED: 3, BOUND: 0}
    other = dict(STRAIGHT, labels=np.array([relabel[int(lab)] for lab in STRAIGHT['labels']]))
    other['labels'] = np.append(other['labels'], 1)
    other['vectors'] = list(other['vectors']) + [line_x(0.)]
    assert build_map_qa(other, classes)['qa'] == build_map_qa(STRAIGHT, CLASSES)['qa']
    # a smaller question ROI drops the crossing (12 m ahead) and the cross street (25 m)
    small = answers(build_map_qa(STRAIGHT, CLASSES, roi_size=(30., 20.)))
    assert small['count_divider'] == ('3', 3) and small['crossing_near'] == ('no', False)
    assert 'crossing_distance' not in small


def test_deterministic():
    runs = [pickle.dumps(build_map_qa(a, CLASSES)) for a in (STRAIGHT, LEFT, STRAIGHT, LEFT)]
    assert runs[0] == runs[2] and runs[1] == runs[3] and runs[0] != runs[1]


def test_bad_map_annos():
    with pytest.raises(ValueError, match=r"lack \['boundary'\]"):
        build_map_qa(STRAIGHT, ('divider', 'ped_crossing'))
    with pytest.raises(ValueError, match='label 7 of instance 0'):
        build_map_qa(dict(STRAIGHT, labels=np.full(7, 7)), CLASSES)
    with pytest.raises(ValueError, match='6 vectors but 7 labels'):
        build_map_qa(dict(STRAIGHT, vectors=STRAIGHT['vectors'][:6]), CLASSES)
    with pytest.raises(ValueError, match=r'vector 1 must be a finite \(N, 2\)'):
        build_map_qa(annos((DIV, line_x(0.)), (DIV, np.full((3, 2), np.nan))), CLASSES)


@pytest.mark.parametrize('qtype', list(QA_KINDS))
def test_parse_round_trip(qtype):
    kind = QA_KINDS[qtype]
    values = {'count': [0, 3, 12], 'yesno': [True, False], 'metres': [0., 7., 12., 31.],
              'category': list(CATEGORIES.get(qtype, ()))}[kind]
    for value in values:
        text = format_answer(qtype, value)
        assert parse_answer(qtype, text) == value and type(parse_answer(qtype, text)) is type(value)
        assert parse_answer(qtype, f' {text.upper()}. ') == value
    for garbage in ('', 'banana', '3 dividers', 'yes no', '-2', '12 km', 'up', '1 2', 'nan'):
        assert parse_answer(qtype, garbage) is None, garbage


def test_parse_variants_and_errors():
    assert parse_answer('crossing_distance', '12m') == 12.
    assert parse_answer('crossing_distance', '12.5 metres') == 12.5
    assert parse_answer('nearest_boundary_distance', '4') == 4.
    assert parse_answer('count_divider', '4 m') is None
    assert parse_answer('road_curve', 'Left') == 'left'
    assert parse_answer('nearest_boundary_side', 'straight') is None
    assert format_answer('crossing_distance', 2.5) == '3 m'
    assert format_answer('crossing_distance', 3.49) == '3 m'
    with pytest.raises(ValueError, match="unknown question type 'colour'"):
        parse_answer('colour', 'red')
    with pytest.raises(TypeError, match='must be a str'):
        parse_answer('count_divider', 3)
    with pytest.raises(ValueError, match="one of \\('left', 'right'\\)"):
        format_answer('nearest_boundary_side', 'up')


# ----------------------------------------------------------------- info files, metric
def write_infos(path, scenes: dict[str, dict], language: bool = True) -> str:
    cam = dict(img_path='samples/CAM_FRONT/x.jpg', cam2img=np.eye(3), lidar2cam=np.eye(4),
               cam2ego=np.eye(4), lidar2img=np.eye(4), sample_data_token='sd', timestamp=0,
               height=9, width=16)
    entries = []
    for i, (token, map_annos) in enumerate(scenes.items()):
        entry = dict(token=token, sample_idx=i, scene_token='s', scene_name='scene-0001',
                     location='boston-seaport', timestamp=i, ego2global=np.eye(4),
                     lidar2ego=np.eye(4), images=dict(CAM_FRONT=cam), lidar_sweeps=[],
                     lidar_points=dict(lidar_path='samples/L/x.bin', num_pts_feats=5))
        if map_annos is not None:
            entry['map_annos'] = map_annos
            if language:
                entry['language'] = build_map_qa(map_annos, CLASSES)
        entries.append(entry)
    dump_atomic(dict(metainfo=dict(classes=CLASSES, roi_size=(30., 60.)), data_list=entries),
                str(path))
    return str(path)


def test_add_language_targets_and_dataset(tmp_path):
    path = write_infos(tmp_path / 'infos.pkl', dict(a=STRAIGHT, b=LEFT, c=None), language=False)
    old = NuScenesMapDataset(ann_file=path)  # infos without language still load
    assert 'language' not in old.get_data_info(0)
    assert add_language_targets(path) == 2
    infos = load_data_file(path)
    assert infos['metainfo']['qa_version'] == QA_VERSION
    assert infos['data_list'][0]['language'] == build_map_qa(STRAIGHT, CLASSES)
    assert 'language' not in infos['data_list'][2]  # no map GT (test split): no questions
    ds = NuScenesMapDataset(ann_file=path)
    assert ds.metainfo['qa_version'] == QA_VERSION
    assert ds.get_data_info(1)['language'] == build_map_qa(LEFT, CLASSES)
    assert ds.prepare_data(1)['language']['qa'][0]['answer'] == '3'  # what the pipeline gets


def test_add_language_targets_bad_input(tmp_path):
    broken = dict(LEFT, labels=LEFT['labels'][:2])
    bad = write_infos(tmp_path / 'bad.pkl', dict(a=STRAIGHT, b=broken), language=False)
    before = open(bad, 'rb').read()
    with pytest.raises(ValueError, match=re.escape(
            f"{bad}: sample 'b': map_annos: 6 vectors but 2 labels")):
        add_language_targets(bad)
    assert open(bad, 'rb').read() == before  # nothing written
    with pytest.raises(ValueError, match='.pkl info files only'):
        add_language_targets(str(tmp_path / 'infos.json'))
    with pytest.raises(FileNotFoundError, match='info file not found'):
        add_language_targets(str(tmp_path / 'missing.pkl'))


def _tool(name: str):
    path = os.path.join(REPO, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_tool_{os.path.basename(name)}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_create_data_language_only(tmp_path):
    write_infos(tmp_path / 'nuscenes_map_infos_train.pkl', dict(a=STRAIGHT), language=False)
    write_infos(tmp_path / 'nuscenes_map_infos_val.pkl', dict(b=LEFT), language=False)
    tool = _tool('create_data')
    tool.main(['nuscenes', '--root-path', str(tmp_path), '--language-only'])
    for split, scene in (('train', STRAIGHT), ('val', LEFT)):
        entry = load_data_file(str(tmp_path / f'nuscenes_map_infos_{split}.pkl'))['data_list'][0]
        assert entry['language'] == build_map_qa(scene, CLASSES)
    with pytest.raises(FileNotFoundError, match='--language-only: none of the info files'):
        tool.main(['nuscenes', '--root-path', str(tmp_path / 'none'), '--language-only'])


def _pred(token: str, **texts: str) -> dict:
    return dict(token=token, pred_answers=[dict(type=t, question=QUESTIONS[t], answer=a)
                                           for t, a in texts.items()])


def test_metric_scores(tmp_path):
    ann = write_infos(tmp_path / 'val.pkl', dict(a=STRAIGHT, b=LEFT, c=EMPTY, d=RIGHT))
    metric = METRICS.build(dict(type='MapQAMetric', ann_file=ann))
    assert isinstance(metric, MapQAMetric)
    metric.process(None, [
        _pred('a', count_divider='4', count_boundary='3', crossing_ahead='yes',
              crossing_distance='10 m', road_curve='lefty', nearest_boundary_distance='5 m'),
        _pred('b', count_divider='3', crossing_ahead='no', road_curve='left',
              nearest_boundary_side='right', nearest_boundary_distance='far'),
        _pred('c', count_divider=' 0.', crossing_near='No')])  # d: not answered, not scored
    out = metric.evaluate(3)
    expected = {
        'acc_count_divider': 1., 'parsed_count_divider': 1.,
        'acc_count_boundary': 0., 'parsed_count_boundary': 1.,
        'acc_crossing_near': 1., 'parsed_crossing_near': 1.,
        'acc_crossing_ahead': 1., 'parsed_crossing_ahead': 1.,
        'mae_crossing_distance': 2., 'parsed_crossing_distance': 1.,
        'acc_road_curve': 0.5, 'parsed_road_curve': 0.5,
        'acc_nearest_boundary_side': 0., 'parsed_nearest_boundary_side': 1.,
        'mae_nearest_boundary_distance': pytest.approx(0.4), 'parsed_nearest_boundary_distance': .5,
        'accuracy': 7 / 10}
    assert out == {f'NuscMap_qa/{k}': v for k, v in expected.items()}
    # a metres answer nobody could parse: MAE undefined, parse rate 0
    metrics, stats = evaluate_qa_predictions([dict(token='a', answers=[dict(
        type='crossing_distance', answer='near')])], ann)
    assert math.isnan(metrics['mae_crossing_distance']) and metrics['parsed_crossing_distance'] == 0
    assert stats['crossing_distance']['n'] == 1 and math.isnan(metrics['accuracy'])


def test_metric_bad_input(tmp_path):
    ann = write_infos(tmp_path / 'val.pkl', dict(a=STRAIGHT, b=LEFT))
    old = write_infos(tmp_path / 'old.pkl', dict(a=STRAIGHT), language=False)

    def score(results, path=ann):
        return evaluate_qa_predictions(results, path)

    with pytest.raises(ValueError, match="token 'zz', which is not in"):
        score([dict(token='zz', answers=[])])
    with pytest.raises(ValueError, match="two answer entries for token 'a'"):
        score([dict(token='a', answers=[]), dict(token='a', answers=[])])
    with pytest.raises(ValueError, match="'crossing_distance', which .* does not ask"):
        score([dict(token='b', answers=[dict(type='crossing_distance', answer='3 m')])])
    with pytest.raises(ValueError, match="two answers to question type 'road_curve'"):
        score([dict(token='b', answers=[dict(type='road_curve', answer='left')] * 2)])
    metric = MapQAMetric(ann)
    metric.process(None, [dict(token='a', pred_answers=[dict(type='road_curve')])])
    with pytest.raises(ValueError, match="sample 'a': an answer has no 'answer'"):
        metric.compute_metrics(metric.results)
    with pytest.raises(ValueError, match='no "pred_answers"'):
        MapQAMetric(ann).process(None, [dict(token='a')])
    with pytest.raises(ValueError, match='no language targets.*--language-only'):
        score([dict(token='a', answers=[])], old)
    infos = load_data_file(ann)
    infos['data_list'][0]['language']['qa_version'] = QA_VERSION + 1
    dump_atomic(infos, ann)
    with pytest.raises(ValueError, match='qa_version 2, this code scores version 1'):
        score([dict(token='a', answers=[])])


def test_majority_baseline(tmp_path):
    train = write_infos(tmp_path / 'train.pkl', dict(a=STRAIGHT, b=LEFT, c=LEFT, d=EMPTY))
    val = write_infos(tmp_path / 'val.pkl', dict(e=STRAIGHT, f=RIGHT))
    assert answer_histogram(train)['road_curve'] == {'straight': 1, 'left': 2}
    assert majority_answers(train) == {
        'count_divider': '3', 'count_boundary': '2', 'crossing_near': 'yes',
        'crossing_ahead': 'no', 'crossing_distance': '12 m', 'road_curve': 'left',
        'nearest_boundary_side': 'left',
        'nearest_boundary_distance': '8 m'}  # median of 4.6, 7.5, 7.5
    metrics, answers_ = majority_baseline(train, val)
    assert answers_ == majority_answers(train)
    assert metrics == {
        'acc_count_divider': 0., 'parsed_count_divider': 1.,
        'acc_count_boundary': .5, 'parsed_count_boundary': 1.,
        'acc_crossing_near': .5, 'parsed_crossing_near': 1.,
        'acc_crossing_ahead': .5, 'parsed_crossing_ahead': 1.,
        'mae_crossing_distance': pytest.approx(0.), 'parsed_crossing_distance': 1.,
        'acc_road_curve': 0., 'parsed_road_curve': 1.,
        'acc_nearest_boundary_side': .5, 'parsed_nearest_boundary_side': 1.,
        'mae_nearest_boundary_distance': pytest.approx((3.4 + 4.8) / 2),
        'parsed_nearest_boundary_distance': 1.,
        'accuracy': 4 / 12}


@pytest.mark.slow
def test_converter_writes_language(synthetic_root, tmp_path):
    """The synthetic infos made by tools/create_data.py carry the targets of their map GT,
    and --language-only on a copy without them writes the same targets."""
    for split in ('train', 'val'):
        path = os.path.join(synthetic_root, f'nuscenes_map_infos_{split}.pkl')
        infos = load_data_file(path)
        assert infos['metainfo']['qa_version'] == QA_VERSION
        classes = infos['metainfo']['classes']
        for entry in infos['data_list']:
            assert entry['language'] == build_map_qa(entry['map_annos'], classes)
        for entry in infos['data_list']:
            del entry['language']
        copy = str(tmp_path / os.path.basename(path))
        dump_atomic(infos, copy)
        assert add_language_targets(copy) == len(infos['data_list'])
        rebuilt, ref = load_data_file(copy), load_data_file(path)
        assert rebuilt['metainfo'] == ref['metainfo']
        assert [e['language'] for e in rebuilt['data_list']] == \
            [e['language'] for e in ref['data_list']]


def test_stats_tool(tmp_path, capsys):
    train = write_infos(tmp_path / 'train.pkl', dict(a=STRAIGHT, b=LEFT, c=LEFT, d=EMPTY))
    val = write_infos(tmp_path / 'val.pkl', dict(e=STRAIGHT, f=RIGHT))
    metrics = _tool('analysis_tools/qa_stats').main([train, val])
    assert metrics == majority_baseline(train, val)[0]
    out = capsys.readouterr().out
    assert "road_curve (3): 'left': 2, 'straight': 1" in out
    assert 'accuracy: 0.3333' in out
