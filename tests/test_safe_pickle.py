"""Info and prediction pickles load through a restricted unpickler at every entry point: a
crafted ``.pkl`` cannot run a command, and the refusal is one line naming file and global."""
import base64
import json
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from _toy_training import ToyMapModel, toy_config, write_toy_config
from test_training_tools import _tool

from projects.MapLLaVA.mapllava.datasets import NuScenesMapDataset
from projects.MapLLaVA.mapllava.engine.cli import run_cli
from projects.MapLLaVA.mapllava.engine.dump_predictions import DumpMapPredictions
from projects.MapLLaVA.mapllava.evaluation import ChamferMapMetric
from projects.MapLLaVA.mapllava.utils.safe_pickle import UnsafePickleError, safe_load_pickle

FORBIDDEN = f"'{os.system.__module__}.system'"  # 'posix.system' on Linux


class _RunsCommand:
    """Unpickling this runs ``cmd`` through ``os.system`` (with plain ``pickle.load``)."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


@pytest.fixture
def evil(tmp_path):
    """``(path of a malicious .pkl, path its command would create)``."""
    pwned = tmp_path / 'pwned'
    path = tmp_path / 'evil.pkl'
    payload = dict(metainfo=dict(classes=['divider']), data_list=[],
                   results=[_RunsCommand(f'touch {pwned}')])
    with open(path, 'wb') as f:
        pickle.dump(payload, f)
    return str(path), pwned


def _assert_refused(message: str, path: str, pwned) -> None:
    assert not pwned.exists(), 'the pickled command ran'
    assert path in message and FORBIDDEN in message, message
    assert '\n' not in message.strip(), message


def test_eval_tool_refuses_malicious_predictions(evil, tmp_path, capsys):
    """As ``python tools/eval_map.py`` runs: exit status 2, one line, no traceback."""
    path, pwned = evil
    argv = [path, '--ann-file', str(tmp_path / 'unused.pkl')]
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: _tool('eval_map').main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ')
    _assert_refused(err, path, pwned)


def test_eval_tool_refuses_malicious_infos(evil, tmp_path):
    path, pwned = evil
    preds = tmp_path / 'preds.json'
    preds.write_text(json.dumps(dict(results=[dict(token='t', vectors=[], scores=[],
                                                   labels=[])])))
    with pytest.raises(UnsafePickleError) as err:
        _tool('eval_map').main([str(preds), '--ann-file', path])
    _assert_refused(str(err.value), path, pwned)


def test_dataset_refuses_malicious_infos(evil, tmp_path):
    path, pwned = evil
    with pytest.raises(UnsafePickleError) as err:
        NuScenesMapDataset(ann_file='evil.pkl', data_root=str(tmp_path))
    _assert_refused(str(err.value), path, pwned)


def test_metric_refuses_malicious_infos(evil):
    path, pwned = evil
    with pytest.raises(UnsafePickleError) as err:
        ChamferMapMetric(ann_file=path).compute_metrics([])
    _assert_refused(str(err.value), path, pwned)


def test_preflight_reports_malicious_infos(evil, tmp_path, capsys):
    path, pwned = evil
    cfg = write_toy_config(tmp_path / 'c.py', str(tmp_path / 'work'))
    code = _tool('preflight').main([cfg, '--cfg-options',
                                    f'+train_dataloader.dataset.data_root={tmp_path}',
                                    '+train_dataloader.dataset.ann_file=evil.pkl'])
    assert code == 1
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith('FAIL  infos')]
    assert len(lines) == 1
    _assert_refused(lines[0], path, pwned)


def _toy_test_setup(tmp_path, **overrides) -> tuple:
    """``(config, checkpoint)`` of the untrained toy model for tools/test.py."""
    ckpt = str(tmp_path / 'toy.pth')
    torch.save(dict(state_dict=ToyMapModel().state_dict()), ckpt)
    imports = toy_config('w')['custom_imports']
    imports['imports'] = list(imports['imports']) + ['projects.MapLLaVA.mapllava.evaluation']
    cfg = write_toy_config(tmp_path / 'c.py', str(tmp_path / 'work'), custom_imports=imports,
                           **overrides)
    return cfg, ckpt


def test_test_tool_refuses_malicious_metric_infos(evil, tmp_path, capsys):
    """tools/test.py --out: a refused info file is a one-line user error, nothing dumped."""
    path, pwned = evil
    cfg, ckpt = _toy_test_setup(
        tmp_path, test_evaluator=dict(type='ChamferMapMetric', ann_file=path))
    out = tmp_path / 'preds.json'
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: _tool('test').main([cfg, ckpt, '--out', str(out)]))
    assert exc.value.code == 2
    _assert_refused(capsys.readouterr().err, path, pwned)
    assert not out.exists()


@pytest.mark.parametrize('data', [
    b'cbuiltins\neval\n(Vprint(1)\ntR.',
    b'cbuiltins\ngetattr\n(cbuiltins\nset\nVadd\ntR.',
    b'cnumpy\nload\n(Vx.npy\ntR.',
    b'c_codecs\nencode\n(Vx\nVrot13\ntR.',
], ids=['eval', 'getattr', 'numpy.load', 'codecs-rot13'])
def test_only_builtin_data_and_numpy_arrays_are_allowed(tmp_path, data):
    path = tmp_path / 'x.pkl'
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError, match=r'x\.pkl: refusing'):
        safe_load_pickle(str(path))


# dict(a=np.arange(6, dtype=np.float32).reshape(2, 3), s=np.float64(1.5),
#      o=np.array(['x', None], dtype=object), b=b'z', t={1}) pickled by numpy 1.26.4 and 2.3.5
# (numpy.core vs numpy._core names), protocol 2 (mmengine.dump's default) and 5 (ours)
_PICKLES = {
    'numpy1-protocol2': 'gAJ9cQAoWAEAAABhcQFjbnVtcHkuY29yZS5tdWx0aWFycmF5Cl9yZWNvbnN0cnVjdApxAmNudW1weQpuZGFycmF5CnEDSwCFcQRjX2NvZGVjcwplbmNvZGUKcQVYAQAAAGJxBlgGAAAAbGF0aW4xcQeGcQhScQmHcQpScQsoSwFLAksDhnEMY251bXB5CmR0eXBlCnENWAIAAABmNHEOiYiHcQ9ScRAoSwNYAQAAADxxEU5OTkr/////Sv////9LAHRxEmKJaAVYGwAAAAAAAAAAAMKAPwAAAEAAAEBAAADCgEAAAMKgQHETaAeGcRRScRV0cRZiWAEAAABzcRdjbnVtcHkuY29yZS5tdWx0aWFycmF5CnNjYWxhcgpxGGgNWAIAAABmOHEZiYiHcRpScRsoSwNoEU5OTkr/////Sv////9LAHRxHGJoBVgJAAAAAAAAAAAAw7g/cR1oB4ZxHlJxH4ZxIFJxIVgBAAAAb3EiaAJoA0sAhXEjaAmHcSRScSUoSwFLAoVxJmgNWAIAAABPOHEniYiHcShScSkoSwNYAQAAAHxxKk5OTkr/////Sv////9LP3RxK2KJXXEsKFgBAAAAeHEtTmV0cS5iWAEAAABicS9oBVgBAAAAenEwaAeGcTFScTJYAQAAAHRxM2NfX2J1aWx0aW5fXwpzZXQKcTRdcTVLAWGFcTZScTd1Lg==',  # noqa: E501
    'numpy1-protocol5': 'gAWVbAEAAAAAAAB9lCiMAWGUjBJudW1weS5jb3JlLm51bWVyaWOUjAtfZnJvbWJ1ZmZlcpSTlCiWGAAAAAAAAAAAAAAAAACAPwAAAEAAAEBAAACAQAAAoECUjAVudW1weZSMBWR0eXBllJOUjAJmNJSJiIeUUpQoSwOMATyUTk5OSv////9K/////0sAdJRiSwJLA4aUjAFDlHSUUpSMAXOUjBVudW1weS5jb3JlLm11bHRpYXJyYXmUjAZzY2FsYXKUk5RoCIwCZjiUiYiHlFKUKEsDaAxOTk5K/////0r/////SwB0lGJDCAAAAAAAAPg/lIaUUpSMAW+UaBOMDF9yZWNvbnN0cnVjdJSTlGgGjAduZGFycmF5lJOUSwCFlEMBYpSHlFKUKEsBSwKFlGgIjAJPOJSJiIeUUpQoSwOMAXyUTk5OSv////9K/////0s/dJRiiV2UKIwBeJROZXSUYowBYpRDAXqUjAF0lI+UKEsBkHUu',  # noqa: E501
    'numpy2-protocol2': 'gAJ9cQAoWAEAAABhcQFjbnVtcHkuX2NvcmUubXVsdGlhcnJheQpfcmVjb25zdHJ1Y3QKcQJjbnVtcHkKbmRhcnJheQpxA0sAhXEEY19jb2RlY3MKZW5jb2RlCnEFWAEAAABicQZYBgAAAGxhdGluMXEHhnEIUnEJh3EKUnELKEsBSwJLA4ZxDGNudW1weQpkdHlwZQpxDVgCAAAAZjRxDomIh3EPUnEQKEsDWAEAAAA8cRFOTk5K/////0r/////SwB0cRJiiWgFWBsAAAAAAAAAAADCgD8AAABAAABAQAAAwoBAAADCoEBxE2gHhnEUUnEVdHEWYlgBAAAAc3EXY251bXB5Ll9jb3JlLm11bHRpYXJyYXkKc2NhbGFyCnEYaA1YAgAAAGY4cRmJiIdxGlJxGyhLA2gRTk5OSv////9K/////0sAdHEcYmgFWAkAAAAAAAAAAADDuD9xHWgHhnEeUnEfhnEgUnEhWAEAAABvcSJoAmgDSwCFcSNoCYdxJFJxJShLAUsChXEmaA1YAgAAAE84cSeJiIdxKFJxKShLA1gBAAAAfHEqTk5OSv////9K/////0s/dHErYoldcSwoWAEAAAB4cS1OZXRxLmJYAQAAAGJxL2gFWAEAAAB6cTBoB4ZxMVJxMlgBAAAAdHEzY19fYnVpbHRpbl9fCnNldApxNF1xNUsBYYVxNlJxN3Uu',  # noqa: E501
    'numpy2-protocol5': 'gAWVbgEAAAAAAAB9lCiMAWGUjBNudW1weS5fY29yZS5udW1lcmljlIwLX2Zyb21idWZmZXKUk5QolhgAAAAAAAAAAAAAAAAAgD8AAABAAABAQAAAgEAAAKBAlIwFbnVtcHmUjAVkdHlwZZSTlIwCZjSUiYiHlFKUKEsDjAE8lE5OTkr/////Sv////9LAHSUYksCSwOGlIwBQ5R0lFKUjAFzlIwWbnVtcHkuX2NvcmUubXVsdGlhcnJheZSMBnNjYWxhcpSTlGgIjAJmOJSJiIeUUpQoSwNoDE5OTkr/////Sv////9LAHSUYkMIAAAAAAAA+D+UhpRSlIwBb5RoE4wMX3JlY29uc3RydWN0lJOUaAaMB25kYXJyYXmUk5RLAIWUQwFilIeUUpQoSwFLAoWUaAiMAk84lImIh5RSlChLA4wBfJROTk5K/////0r/////Sz90lGKJXZQojAF4lE5ldJRijAFilEMBepSMAXSUj5QoSwGQdS4=',  # noqa: E501
}


@pytest.mark.parametrize('name', sorted(_PICKLES))
def test_numpy_1_and_2_pickles_load(tmp_path, name):
    path = tmp_path / 'x.pkl'
    path.write_bytes(base64.b64decode(_PICKLES[name]))
    got = safe_load_pickle(str(path))
    assert got['a'].dtype == np.float32 and got['a'].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert type(got['s']) is np.float64 and got['s'] == 1.5
    assert got['o'].dtype == object and got['o'].tolist() == ['x', None]
    assert got['b'] == b'z' and got['t'] == {1}


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    return type(a) is type(b) and a == b


def test_real_info_files_load(synthetic_root):
    """The infos tools/create_data.py writes (info_builder) load as plain pickle does."""
    for split in ('train', 'val'):
        path = osp.join(synthetic_root, f'nuscenes_map_infos_{split}.pkl')
        with open(path, 'rb') as f:
            ref = pickle.load(f)
        got = safe_load_pickle(path)
        assert got['data_list'] and _same(got, ref)


def _fake_predictions(infos: dict, seed: int = 0) -> list:
    """Noisy copies of each sample's GT plus random false positives, as data samples."""
    rng = np.random.default_rng(seed)
    samples = []
    for info in infos['data_list']:
        gt = np.asarray(info['map_annos']['vectors_resampled'], np.float32)
        fp = rng.uniform(-15, 15, (3, gt.shape[1], 2)).astype(np.float32)
        lines = np.concatenate([gt + rng.normal(0, 0.4, gt.shape).astype(np.float32), fp])
        labels = np.concatenate([info['map_annos']['labels'], rng.integers(0, 3, 3)])
        samples.append(dict(token=info['token'], pred_instances_3d=dict(
            polylines=torch.from_numpy(lines), labels=torch.from_numpy(labels),
            scores=torch.from_numpy(rng.uniform(0, 1, len(lines)).astype(np.float32)))))
    return samples


def test_test_tool_out_json_holds_what_the_pkl_holds(tmp_path):
    cfg, ckpt = _toy_test_setup(tmp_path)
    eval_map, loaded = _tool('eval_map'), {}
    for ext in ('pkl', 'json'):
        out = str(tmp_path / f'preds.{ext}')
        _tool('test').main([cfg, ckpt, '--work-dir', str(tmp_path / ext), '--out', out])
        loaded[ext] = eval_map.load_predictions(out, ['divider'])
    with open(tmp_path / 'preds.json') as f:
        assert json.load(f)['meta']['format'] == 'mapllava-predictions'
    assert loaded['json'][1] == loaded['pkl'][1] == ('divider', 'ped_crossing', 'boundary')
    assert len(loaded['pkl'][0]) == 4 and _same(loaded['json'][0], loaded['pkl'][0])


def test_test_out_round_trip_json_and_pkl_same_map(synthetic_root, tmp_path):
    """What tools/test.py --out dumps (.pkl and .json) scores the same through eval_map."""
    ann = osp.join(synthetic_root, 'nuscenes_map_infos_val.pkl')
    samples = _fake_predictions(safe_load_pickle(ann))
    eval_map, metrics, loaded = _tool('eval_map'), {}, {}
    for ext in ('pkl', 'json'):
        out = str(tmp_path / f'preds.{ext}')
        dump = DumpMapPredictions(out_file_path=out)
        dump.dataset_meta = dict(classes=('divider', 'ped_crossing', 'boundary'),
                                 roi_size=(30., 60.))
        dump.process({}, samples)
        dump.compute_metrics(dump.results)
        loaded[ext] = eval_map.load_predictions(out, ['divider'])
        metrics[ext] = eval_map.main([out, '--ann-file', ann])
    with open(tmp_path / 'preds.pkl', 'rb') as f:  # the safe loader reads the dump as is
        assert _same(safe_load_pickle(str(tmp_path / 'preds.pkl')), pickle.load(f))
    assert loaded['json'][1] == loaded['pkl'][1] == ('divider', 'ped_crossing', 'boundary')
    assert _same(loaded['json'][0], loaded['pkl'][0])
    assert metrics['json'] == metrics['pkl']
    assert 0.05 < metrics['pkl']['mAP'] < 0.95, metrics['pkl']



def test_malformed_json_predictions_are_a_one_line_user_error(tmp_path, capsys):
    """A truncated JSON predictions file gets the file named, exit 2, no traceback."""
    bad = tmp_path / 'preds.json'
    bad.write_text('{"meta": {"classes": [')
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: _tool('eval_map').main([str(bad), '--ann-file', str(tmp_path / 'x.pkl')]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and 'not valid JSON' in err and len(err.splitlines()) == 1, err


def test_test_out_keeps_the_answers_and_eval_map_scores_them(synthetic_root, tmp_path):
    """A model that talks: --out keeps its generated answers (.pkl and .json alike), and
    eval_map scores them as MapQAMetric does, beside the mAP."""
    ann = osp.join(synthetic_root, 'nuscenes_map_infos_val.pkl')
    infos = safe_load_pickle(ann)
    samples = _fake_predictions(infos)
    qa = {info['token']: info['language']['qa'] for info in infos['data_list']}
    for sample in samples:  # the GT answers, but the first sample's divider count off by 7
        sample['pred_answers'] = [dict(type=q['type'], question=q['question'],
                                       answer=q['answer']) for q in qa[sample['token']]]
    first = samples[0]['pred_answers'][0]
    assert first['type'] == 'count_divider'
    first['answer'] = str(int(first['answer']) + 7)
    eval_map, metrics = _tool('eval_map'), {}
    for ext in ('pkl', 'json'):
        out = str(tmp_path / f'preds.{ext}')
        dump = DumpMapPredictions(out_file_path=out)
        dump.dataset_meta = dict(classes=('divider', 'ped_crossing', 'boundary'))
        dump.process({}, samples)
        dump.compute_metrics(dump.results)
        results, _ = eval_map.load_predictions(out, ['divider'])
        assert results[0]['answers'][0] == dict(first)
        metrics[ext] = eval_map.main([out, '--ann-file', ann])
    assert metrics['json'] == metrics['pkl']
    m = metrics['pkl']
    assert m['qa/acc_count_divider'] == (len(samples) - 1) / len(samples)
    assert m['qa/acc_crossing_near'] == 1.0 and 'mAP' in m
