"""tools/serve.py (HTTP API + web viewer) and tools/chat.py on the tiny MapLLaVA and its
bypass-bridge twin, on the small synthetic nuScenes; the viewer also in a headless Chromium.

The checkpoints are the freshly built (untrained) models: these tests check that requests
reach the model as the test tool's samples do and that answers and errors come back, not
what the model predicts.
"""
import base64
import io
import json
import os.path as osp
import pickle
import re
import shutil
import socket
import subprocess
import threading
import time
from html.parser import HTMLParser
from urllib.parse import quote

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from mmdet3d.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from test_tiny_end_to_end import write_tiny_config
from test_training_tools import _tool

from projects.MapLLaVA.mapllava.apis import NO_LANGUAGE_MESSAGE, MapInferencer
from projects.MapLLaVA.mapllava.apis.http_app import create_app
from projects.MapLLaVA.mapllava.engine.cli import run_cli

chat_tool, serve_tool, test_tool = _tool('chat'), _tool('serve'), _tool('test')
pytestmark = pytest.mark.usefixtures('single_thread')

BYPASS = '''_base_ = [{base!r}]
model = dict(bridge=dict(
    _delete_=True, type='BypassBridge', in_channels=128, embed_dims=128, num_map_queries=50,
    width=128, num_layers=2, num_heads=4, ffn_dims=512, dropout=0.0))
'''


def _checkpoint(cfg_path: str, out: str) -> str:
    """The config's model as built (seeded), saved as a weights-only checkpoint."""
    cfg = Config.fromfile(cfg_path)
    init_default_scope('mmdet3d')
    torch.manual_seed(0)
    torch.save(dict(state_dict=MODELS.build(cfg.model).state_dict(), meta={}), out)
    return out


@pytest.fixture(scope='module')
def models(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('serve')
    llm_cfg = write_tiny_config(tmp / 'tiny.py', synthetic_root, str(tmp / 'work'))
    bypass_cfg = str(tmp / 'tiny_bypass.py')
    with open(bypass_cfg, 'w') as f:
        f.write(BYPASS.format(base=llm_cfg))
    out = dict(tmp=tmp, root=synthetic_root, llm_cfg=llm_cfg, bypass_cfg=bypass_cfg,
               llm_ckpt=_checkpoint(llm_cfg, str(tmp / 'tiny.pth')),
               bypass_ckpt=_checkpoint(bypass_cfg, str(tmp / 'bypass.pth')))
    out['llm'] = MapInferencer(llm_cfg, out['llm_ckpt'])
    out['bypass'] = MapInferencer(bypass_cfg, out['bypass_ckpt'])
    return out


@pytest.fixture(scope='module')
def client(models):
    """The API over the bypass model (certainly without a language path)."""
    return TestClient(create_app(models['bypass']))


def _val_infos(root):
    with open(osp.join(root, 'nuscenes_map_infos_val.pkl'), 'rb') as f:
        return pickle.load(f)['data_list']


def _upload(inferencer, token, encode=None):
    """The sample's camera files (or ``encode``d decoded images) as base64, and its calib."""
    info = inferencer.data_info(token)
    images = []
    for path in info['img_path']:
        if encode is None:
            with open(path, 'rb') as f:
                data = f.read()
        else:
            data = cv2.imencode(encode, cv2.imread(path))[1].tobytes()
        images.append(base64.b64encode(data).decode())
    calib = dict(cam2img=[info['images'][c]['cam2img'].tolist() for c in info['cam_names']],
                 lidar2cam=np.asarray(info['lidar2cam']).tolist())
    return images, calib


def _png(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, 'not a PNG'
    return img


# ------------------------------------------------------------------------------ API
def test_samples_and_sample_info(client, models):
    infos = _val_infos(models['root'])
    body = client.get('/samples').json()
    assert body['tokens'] == [e['token'] for e in infos]
    assert body['split'] == 'val' and body['num_views'] == 6
    assert body['classes'] == ['divider', 'ped_crossing', 'boundary']
    assert body['cam_names'][:3] == ['CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT']
    entry = infos[1]
    info = client.get(f'/sample/{entry["token"]}').json()
    assert info['has_gt'] and info['num_gt'] == len(entry['map_annos']['labels'])
    want = [dict(type=qa['type'], question=qa['question'], answer=qa['answer'])
            for qa in (entry.get('language') or {}).get('qa', [])]
    assert info['reference_qa'] == want
    missing = client.get('/sample/nope')
    assert missing.status_code == 404 and missing.json()['field'] == 'token'


def test_predict_matches_the_test_tool(models, tmp_path):
    """The API's sample is the one tools/test.py builds: same checkpoint, same vectors."""
    out = str(tmp_path / 'preds.pkl')
    test_tool.main([models['llm_cfg'], models['llm_ckpt'], '--work-dir', str(tmp_path / 'w'),
                    '--out', out])
    with open(out, 'rb') as f:
        dumped = {r['token']: r for r in pickle.load(f)['results']}
    client = TestClient(create_app(models['llm']))
    assert sorted(dumped) == sorted(models['llm'].tokens)
    for token, ref in dumped.items():
        got = client.post('/predict', json=dict(token=token)).json()
        order = np.argsort(-ref['scores'], kind='stable')
        assert got['token'] == token and got['answers'] is None
        np.testing.assert_allclose(got['vectors'], ref['polylines'][order], atol=1e-5)
        np.testing.assert_allclose(got['scores'], ref['scores'][order], atol=1e-6)
        assert got['labels'] == ref['labels'][order].tolist()
        assert got['label_names'] == [('divider', 'ped_crossing', 'boundary')[i]
                                      for i in got['labels']]


def test_predict_defaults_and_score_threshold(client, models):
    first = client.post('/predict', json={}).json()
    assert first['token'] == models['bypass'].tokens[0]
    assert np.asarray(first['vectors']).shape == (50, 20, 2)
    assert first['scores'] == sorted(first['scores'], reverse=True)
    thr = first['scores'][9]
    some = client.post('/predict', json=dict(score_thr=thr)).json()
    assert some['scores'] == [s for s in first['scores'] if s >= thr]
    assert some['vectors'] == first['vectors'][:len(some['scores'])]


def test_uploaded_images_give_the_dataset_prediction(client, models):
    token = models['bypass'].tokens[2]
    ref = client.post('/predict', json=dict(token=token)).json()
    for encode in (None, '.png'):  # the camera JPEG files themselves, lossless PNGs of them
        images, calib = _upload(models['bypass'], token, encode)
        got = client.post('/predict', json=dict(images=images, calib=calib))
        assert got.status_code == 200, got.text
        np.testing.assert_allclose(got.json()['vectors'], ref['vectors'], atol=1e-5)
        assert got.json()['labels'] == ref['labels']


def test_uploaded_img_aug_matrix_is_composed(models):
    """Half-size uploads with their 0.5 pixel map: the pipeline's resize back to the config's
    size makes the total image map the identity again."""
    inf = models['bypass']
    info = inf.data_info(inf.tokens[0])
    images = [cv2.resize(cv2.imread(p), (80, 45)) for p in info['img_path']]
    aug = np.diag([0.5, 0.5, 1., 1.])
    calib = dict(cam2img=[info['images'][c]['cam2img'] for c in info['cam_names']],
                 lidar2cam=info['lidar2cam'], img_aug_matrix=[aug] * 6)
    sample = inf.upload_inputs(images, calib)['data_samples']
    np.testing.assert_allclose(sample.img_aug_matrix, np.repeat(np.eye(4)[None], 6, 0))
    np.testing.assert_allclose(sample.lidar2img, info['lidar2img'])
    assert sample.img_shape == (90, 160)


@pytest.mark.parametrize('case, status, field', [
    ('five_images', 400, 'images'),
    ('cam2img_shape', 400, 'calib.cam2img'),
    ('lidar2cam_nan', 400, 'calib.lidar2cam[3]'),
    ('cam2img_singular', 400, 'calib.cam2img[1]'),
    ('lidar2cam_last_row', 400, 'calib.lidar2cam[0]'),
    ('aug_singular', 400, 'calib.img_aug_matrix[5]'),
    ('ragged', 400, 'calib.lidar2cam'),
    ('bad_base64', 400, 'images[2]'),
    ('not_an_image', 400, 'images[4]'),
    ('images_without_calib', 400, 'calib'),
    ('calib_without_images', 400, 'calib'),
    ('token_and_images', 400, 'token'),
    ('empty_question', 400, 'question'),
    ('unknown_token', 404, 'token'),
])
def test_predict_rejects_bad_fields(client, models, case, status, field):
    images, calib = _upload(models['bypass'], models['bypass'].tokens[0])
    eye = np.eye(4).tolist()
    body = dict(images=images, calib=calib)
    if case == 'five_images':
        body['images'] = images[:5]
    elif case == 'cam2img_shape':
        calib['cam2img'] = [[[1., 0.], [0., 1.]]] * 6
    elif case == 'lidar2cam_nan':
        calib['lidar2cam'][3][1][2] = float('nan')
    elif case == 'cam2img_singular':
        calib['cam2img'][1] = [[1., 2., 3.], [2., 4., 6.], [0., 0., 1.]]
    elif case == 'lidar2cam_last_row':
        calib['lidar2cam'][0][3] = [0., 0., 1., 1.]
    elif case == 'aug_singular':
        calib['img_aug_matrix'] = [eye] * 5 + [np.diag([1., 0., 1., 1.]).tolist()]
    elif case == 'ragged':
        calib['lidar2cam'][2] = calib['lidar2cam'][2][:3]
    elif case == 'bad_base64':
        images[2] = 'not base64!'
    elif case == 'not_an_image':
        images[4] = base64.b64encode(b'hello, not a JPEG').decode()
    elif case == 'images_without_calib':
        body = dict(images=images)
    elif case == 'calib_without_images':
        body = dict(calib=calib)
    elif case == 'token_and_images':
        body['token'] = models['bypass'].tokens[0]
    elif case == 'empty_question':
        body = dict(question='  ')
    elif case == 'unknown_token':
        body = dict(token='no-such-token')
    res = client.post('/predict', content=json.dumps(body),  # allows NaN, as browsers' JSON
                      headers={'Content-Type': 'application/json'})
    assert res.status_code == status, res.text
    assert res.json()['field'] == field and res.json()['detail'].startswith(field + ':')


def test_predict_schema_errors_name_the_field(client):
    for body, loc in ((dict(images='x'), ['body', 'images']),
                      (dict(tokn='x'), ['body', 'tokn']),
                      (dict(images=['a'] * 6, calib=dict(cam2img=[])),
                       ['body', 'calib', 'lidar2cam'])):
        res = client.post('/predict', json=body)
        assert res.status_code == 422 and res.json()['detail'][0]['loc'] == loc, res.text


def test_question_to_a_model_without_language_path(client, models):
    res = client.post('/predict', json=dict(token=models['bypass'].tokens[1],
                                            question='how many lane dividers are there?'))
    assert res.status_code == 422
    assert res.json() == dict(detail=NO_LANGUAGE_MESSAGE, field='question')


def test_pictures(client, models):
    token = models['bypass'].tokens[1]
    bev_all = _png(client.get(f'/sample/{token}/bev.png?score_thr=0').content)
    bev_none = _png(client.get(f'/sample/{token}/bev.png?score_thr=1.01').content)
    assert bev_all.shape == bev_none.shape and bev_all.shape[0] > bev_all.shape[1]
    assert (bev_all != bev_none).any()  # the predictions are drawn
    raw = cv2.imread(models['bypass'].data_info(token)['img_path'][0])
    cam_all = _png(client.get(f'/sample/{token}/cam/0.png?score_thr=0').content)
    cam_none = _png(client.get(f'/sample/{token}/cam/0.png?score_thr=1.01').content)
    assert cam_all.shape == raw.shape == (90, 160, 3)
    assert (cam_all != cam_none).any() and (cam_none != raw).any()  # prediction; GT
    res = client.get(f'/sample/{token}/cam/6.png')
    assert res.status_code == 404 and res.json()['field'] == 'view'
    assert client.get('/sample/nope/bev.png').status_code == 404
    assert client.get('/sample/nope/cam/0.png').status_code == 404


def test_viewer_page_is_self_contained(client):
    res = client.get('/')
    assert res.status_code == 200 and res.headers['content-type'].startswith('text/html')
    page = res.text
    for element in ('id="sample"', 'id="question"', 'id="answer"', 'id="bev"'):
        assert element in page
    assert not re.search(r'''(src|href)\s*=\s*["']?(https?:)?//''', page)
    assert 'import ' not in page and '@import' not in page


# ----------------------------------------------------------------------------- chat
def _chat(capsys, argv, stdin=None):
    """Run tools/chat.py as its __main__ does: (exit status, stdout, stderr)."""
    code = 0
    try:
        run_cli(lambda: chat_tool.main(argv, stdin=stdin))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_chat_one_shot_without_language_path(models, client, capsys, tmp_path):
    token = models['bypass'].tokens[1]
    bev = str(tmp_path / 'pics' / 'bev.png')
    code, out, err = _chat(capsys, [models['bypass_cfg'], models['bypass_ckpt'], '--token',
                                    token, '--question', 'is there a crossing ahead?',
                                    '--save-bev', bev, '--score-thr', '0'])
    assert code == 2
    assert err.strip().splitlines()[-1] == f'error: {NO_LANGUAGE_MESSAGE}'
    assert f'sample {token}: 50 map elements scoring >= 0' in out
    np.testing.assert_array_equal(
        _png(open(bev, 'rb').read()),
        _png(client.get(f'/sample/{token}/bev.png?score_thr=0').content))


def test_chat_interactive(models, capsys):
    tokens = models['bypass'].tokens
    lines = io.StringIO(f'/samples\n/token nope\n/token {tokens[2]}\n'
                        'how many boundaries are there?\n/quit\nnot read\n')
    code, out, err = _chat(capsys, [models['bypass_cfg'], models['bypass_ckpt']], lines)
    assert code == 0
    assert out.splitlines()[0].startswith(f'sample {tokens[0]}: ')
    assert all(t in out for t in tokens) and f'sample {tokens[2]}: ' in out
    assert "error: token: no sample 'nope' in the val split" in err
    assert err.count(NO_LANGUAGE_MESSAGE) == 1


def test_chat_user_errors_are_one_line(models, capsys, tmp_path):
    code, _, err = _chat(capsys, [models['bypass_cfg'], models['bypass_ckpt'], '--token',
                                  'nope', '--question', 'q'])
    assert code == 2 and err == "error: token: no sample 'nope' in the val split\n"
    missing = str(tmp_path / 'none.pth')
    code, _, err = _chat(capsys, [models['bypass_cfg'], missing, '--question', 'q'])
    assert code == 2 and err == f'error: checkpoint not found: {missing}\n'


def test_serve_tool_user_errors_are_one_line(models, capsys, tmp_path):
    assert serve_tool.create_app is create_app  # the app factory, importable from the tool
    missing = str(tmp_path / 'none.pth')
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: serve_tool.main([models['bypass_cfg'], missing, '--port', '0']))
    assert exc.value.code == 2
    assert capsys.readouterr().err == f'error: checkpoint not found: {missing}\n'


# -------------------------------------------------------------------------- browser
def _chromium():
    return next((p for p in map(shutil.which, ('chromium', 'chromium-browser',
                                                'google-chrome')) if p), None)


class _Elements(HTMLParser):
    """Text and attributes of the elements with an id."""

    def __init__(self):
        super().__init__()
        self.attrs, self.text, self._open = {}, {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if 'id' in attrs:
            self.attrs[attrs['id']] = attrs
            self.text.setdefault(attrs['id'], '')
            if tag not in ('img', 'input'):
                self._open.append((tag, attrs['id']))

    def handle_endtag(self, tag):
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data):
        for _, element in self._open:
            self.text[element] += data


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason='chromium is not installed (.ci/run installs '
                    'it: apt-get install chromium)')
def test_viewer_in_headless_chromium(models, tmp_path):
    """The page from the URL parameters: pick the second sample, ask, show the answer (the
    language model's, or the server's message when it has no language path)."""
    import uvicorn

    inferencer = models['llm']
    token, question = inferencer.tokens[1], 'how many lane dividers are there?'
    expected = TestClient(create_app(inferencer)).post(
        '/predict', json=dict(token=token, question=question))
    if expected.status_code == 200:
        want_state, want = 'answered', '\n'.join(a['answer'] for a in expected.json()['answers'])
    else:
        want_state, want = 'error', expected.json()['detail']
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(inferencer), log_level='warning'))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started, 'uvicorn did not start'
        url = f'http://127.0.0.1:{port}/?token={token}&q={quote(question)}'
        dom = subprocess.run(
            [_chromium(), '--headless', '--no-sandbox', '--disable-gpu',
             '--disable-dev-shm-usage', f'--user-data-dir={tmp_path / "profile"}',
             '--virtual-time-budget=30000', '--dump-dom', url],
            capture_output=True, text=True, timeout=180).stdout
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    page = _Elements()
    page.feed(dom)
    assert page.attrs.get('answer', {}).get('data-state') == want_state, dom[-2000:]
    assert page.text['answer'].strip() == want.strip()
    assert page.attrs['bev']['src'].startswith(f'/sample/{token}/bev.png')
    assert page.attrs['cam-0']['src'].startswith(f'/sample/{token}/cam/0.png')
    assert 'predicted elements' in page.text['summary']
    assert page.text['status'].startswith(f'{len(inferencer.tokens)} val samples')
