"""tools/train.py, tools/test.py, tools/dist_train.sh, tools/preflight.py and the loss-curve
plot on the toy model: bad input fails before training, with the offending name."""
import importlib.util
import os
import os.path as osp
import pickle
import re
import shutil
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from _toy_training import REPO_ROOT, ToyMapModel, write_toy_config
from mmdet3d.registry import MODELS
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from projects.MapLLaVA.mapllava.datasets import NuScenesMapDataset
from projects.MapLLaVA.mapllava.datasets.map_gt import dump_atomic, make_map_annos
from projects.MapLLaVA.mapllava.engine.cli import run_cli
from projects.MapLLaVA.mapllava.engine.config_checks import (
    ConfigCheckError,
    pretrained_refs,
    resolve_pretrained,
    validate_cfg_options,
)
from projects.MapLLaVA.mapllava.transforms import LoadMultiViewImages


def _tool(name):
    path = osp.join(REPO_ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_tool_{osp.basename(name)}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_tool, test_tool = _tool('train'), _tool('test')


def _cli_error(capsys, main, argv):
    """Run a tool like its __main__ does; return the stderr of its exit-status-2 failure."""
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: main(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    """A toy config and a checkpoint trained by tools/train.py (1 epoch)."""
    tmp = tmp_path_factory.mktemp('toy')
    cfg = write_toy_config(tmp / 'toy.py', str(tmp / 'work'), max_epochs=1)
    train_tool.main([cfg])
    return dict(tmp=tmp, cfg=cfg, work_dir=str(tmp / 'work'),
                ckpt=str(tmp / 'work' / 'checkpoint_epoch_1.pth'))


def test_validate_cfg_options():
    cfg = Config(dict(model=dict(head=dict(num_queries=50), layers=[dict(a=1)]),
                      optim_wrapper=dict(optimizer=dict(lr=1.)), train_cfg=dict(max_epochs=2),
                      data_root='d/', train_dataloader=dict(dataset=dict(data_root='d/'))))
    ok = {'model.head.num_queries': 10, 'model.layers.0.a': 2, 'optim_wrapper.clip_grad': None,
          'train_cfg.val_begin': 2, 'load_from': 'x.pth', 'work_dir': 'w',
          '+model.head.new_arg': 1}
    assert validate_cfg_options(cfg, ok)['model.head.new_arg'] == 1
    for bad, hint in [('model.head.num_querys', "did you mean num_queries"),
                      ('model.haed.num_queries', 'did you mean head'),
                      ('model.layers.3.a', 'list of 1 items'),
                      ('model.head.num_queries.x', 'is a int'),
                      ('max_epoch', '<top level> has no key'),
                      ('data_root', 'appears at train_dataloader.dataset.data_root')]:
        with pytest.raises(ConfigCheckError, match=hint) as err:
            validate_cfg_options(cfg, {bad: 1})
        assert bad in str(err.value)


def test_pretrained_refs_and_resolution(tmp_path, monkeypatch):
    import huggingface_hub.constants
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/_base_/models/mapllava_r50_vicuna7b.py'))
    refs = dict(pretrained_refs(cfg.model))
    assert refs == {'model.neck.pretrained': 'Salesforce/blip2-opt-2.7b',
                    'model.bridge.llm_path': 'lmsys/vicuna-7b-v1.5'}  # not the R50 init_cfg
    folder = tmp_path / 'llm'
    folder.mkdir()
    assert not resolve_pretrained(str(folder))[0]  # no config.json
    (folder / 'config.json').write_text('{}')
    assert resolve_pretrained(str(folder))[0]
    assert not resolve_pretrained(str(tmp_path / 'missing'), require_cached=False)[0]
    for var in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    hub_id = 'mapllava-tests/never-cached'
    assert not resolve_pretrained(hub_id)[0]  # preflight: must be in the cache
    assert resolve_pretrained(hub_id, require_cached=False)[0]  # train: may download
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert not resolve_pretrained(hub_id, require_cached=False)[0]


def test_train_rejects_unknown_cfg_option_before_training(tmp_path, capsys):
    cfg = write_toy_config(tmp_path / 'c.py', str(tmp_path / 'work'))
    err = _cli_error(capsys, train_tool.main,
                     [cfg, '--cfg-options', 'model.dimm=3', 'train_cfg.max_epochs=1'])
    assert 'model.dimm' in err and 'train_cfg.max_epochs' not in err
    assert not osp.exists(tmp_path / 'work')  # nothing built, nothing trained


def test_train_names_missing_infos(tmp_path, capsys):
    cfg = write_toy_config(tmp_path / 'c.py', str(tmp_path / 'work'))
    ann = str(tmp_path / 'nuscenes_map_infos_train.pkl')
    err = _cli_error(capsys, train_tool.main,
                     [cfg, '--cfg-options', f'+train_dataloader.dataset.ann_file={ann}'])
    assert ann in err and 'create_data.py' in err


def test_train_names_missing_llm_path(tmp_path, capsys):
    cfg = write_toy_config(tmp_path / 'c.py', str(tmp_path / 'work'))
    err = _cli_error(capsys, train_tool.main,
                     [cfg, '--cfg-options', '+model.llm_path=/nonexistent/vicuna-7b'])
    assert 'model.llm_path' in err and '/nonexistent/vicuna-7b' in err


def test_train_missing_resume_checkpoint(tmp_path, capsys):
    cfg = write_toy_config(tmp_path / 'c.py', str(tmp_path / 'work'))
    err = _cli_error(capsys, train_tool.main, [cfg, '--resume', str(tmp_path / 'no.pth')])
    assert 'no.pth' in err


def test_train_refuses_to_resume_weights_only_file(toy, tmp_path, capsys):
    """best_model.pth and a bare state dict would restart the optimizer and lr schedule."""
    bare = str(tmp_path / 'bare.pth')
    torch.save(dict(state_dict=torch.load(toy['ckpt'], weights_only=True)['state_dict']), bare)
    for weights in (osp.join(toy['work_dir'], 'best_model.pth'), bare):
        work = str(tmp_path / ('work_' + osp.basename(weights)))
        err = _cli_error(capsys, train_tool.main,
                         [toy['cfg'], '--resume', weights, '--work-dir', work])
        assert err.count('\n') == 1 and 'Traceback' not in err, err
        assert f'resume from {weights}: it holds weights only' in err, err
        assert f'load_from={weights}' in err, err
        assert not osp.exists(osp.join(work, 'final_model.pth'))


def test_test_tool_rejects_mismatched_checkpoint(toy, tmp_path, capsys):
    state = torch.load(toy['ckpt'], weights_only=True)['state_dict']
    state['map_head.unexpected'] = state.pop('map_head.bias')
    bad = str(tmp_path / 'bad.pth')
    torch.save(dict(state_dict=state), bad)
    err = _cli_error(capsys, test_tool.main,
                     [toy['cfg'], bad, '--work-dir', str(tmp_path / 'w')])
    assert 'map_head.bias' in err and 'map_head.unexpected' in err


def test_test_tool_out_and_show_dir(toy, tmp_path):
    out, show = str(tmp_path / 'preds' / 'preds.pkl'), str(tmp_path / 'show')
    test_tool.main([toy['cfg'], toy['ckpt'], '--work-dir', str(tmp_path / 'w'), '--out', out,
                    '--show-dir', show, '--score-thr', '0.0'])
    with open(out, 'rb') as f:
        dumped = pickle.load(f)
    assert dumped['meta']['format'] == 'mapllava-predictions'
    assert dumped['meta']['classes'] == ('divider', 'ped_crossing', 'boundary')
    results = dumped['results']
    assert [r['token'] for r in results] == [f'tok{i:03d}' for i in range(4)]
    assert results[0]['polylines'].shape == (4, 5, 2)
    assert results[0]['polylines'].dtype == np.float32 and results[0]['labels'].dtype == np.int64
    assert sorted(os.listdir(show)) == [f'tok{i:03d}_bev.png' for i in range(4)]
    # the offline evaluator reads the file as it is
    loaded, names = _tool('eval_map').load_predictions(out, ['divider'])
    assert len(loaded) == 4 and names == ('divider', 'ped_crossing', 'boundary')


def test_plot_loss_curve(toy, tmp_path):
    out = str(tmp_path / 'curve.png')
    _tool('analysis_tools/plot_loss_curve').main(
        [toy['work_dir'], '--keys', 'loss', 'loss_cls', 'loss_cur', '--out', out])
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(KeyError, match='available'):
        _tool('analysis_tools/plot_loss_curve').main([toy['work_dir'], '--keys', 'nope'])


def _write_infos(root, name, entries):
    os.makedirs(osp.join(root, 'v1.0-mini'), exist_ok=True)
    with open(osp.join(root, name), 'wb') as f:
        pickle.dump(dict(metainfo=dict(version='v1.0-mini'), data_list=entries), f)


def test_preflight_pass_and_fail(toy, tmp_path, capsys):
    preflight = _tool('preflight')
    root = str(tmp_path / 'nus')
    _write_infos(root, 'train.pkl', [dict(token='a', map_annos={})] * 2)
    _write_infos(root, 'val.pkl', [dict(token='b', map_annos={})])
    data = ['train_dataloader', 'val_dataloader', 'test_dataloader']
    good = [f'+{d}.dataset.data_root={root}' for d in data] + [
        '+train_dataloader.dataset.ann_file=train.pkl',
        '+val_dataloader.dataset.ann_file=val.pkl', '+test_dataloader.dataset.ann_file=val.pkl']
    assert preflight.main([toy['cfg'], '--cfg-options', *good]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith('PASS') for line in lines[:-1]), lines
    assert any('2 samples, 2 with map_annos' in line for line in lines)
    assert any(line.startswith('PASS  gpu') for line in lines)

    _write_infos(root, 'val.pkl', [])
    bad = good + ['+model.llm_path=/nonexistent/llm', 'model.type=NoSuchModel',
                  '+preflight.requires_gpu=True', '+preflight.min_free_disk_gb=1e9']
    assert preflight.main([toy['cfg'], '--cfg-options', *bad]) == 1
    out = capsys.readouterr().out
    failed = {line.split()[1] for line in out.splitlines() if line.startswith('FAIL')}
    expected = {'registry', 'infos', 'pretrained', 'disk'}
    if not torch.cuda.is_available():
        expected.add('gpu')
    assert failed == expected, out
    assert 'NoSuchModel (model)' in out and '0 samples' in out

    assert preflight.main([toy['cfg'], '--cfg-options', 'model.typo=1']) == 2
    assert 'FAIL  config' in capsys.readouterr().out


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def dist_train_two_ranks(cfg: str, cwd, work, timeout: int = 300) -> tuple:
    """``tools/dist_train.sh cfg 2`` on CPU; the weights each rank's ToyDumpWeightsHook saved."""
    env = dict(os.environ, PYTHONPATH=osp.join(REPO_ROOT, 'tests'), PORT=str(_free_port()),
               PYTHON=sys.executable, OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', osp.join(REPO_ROOT, 'tools', 'dist_train.sh'), cfg, '2'],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tuple(torch.load(osp.join(work, f'rank{r}.pth'), weights_only=True) for r in (0, 1))


@pytest.mark.slow
def test_torchrun_two_cpu_processes_end_identical(tmp_path):
    work = tmp_path / 'work'
    cfg = write_toy_config(tmp_path / 'dist.py', str(work), max_epochs=2,
                           custom_hooks=[dict(type='ToyDumpWeightsHook')])
    rank0, rank1 = dist_train_two_ranks(cfg, tmp_path, work)
    epoch1 = torch.load(work / 'checkpoint_epoch_1.pth', weights_only=True)['state_dict']
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
    assert not torch.equal(rank0['map_head.weight'], epoch1['map_head.weight'])
    # 8 samples over 2 ranks x batch 2 -> 2 iterations per epoch
    final = torch.load(work / 'final_model.pth', weights_only=True)
    assert final['meta']['iter'] == 4


# ------------------------------------------- data faults, config typos, divergence (issue 11)
def _jpeg() -> bytes:
    """A small JPEG whose second half is entropy-coded data (noise compresses badly)."""
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return cv2.imencode('.jpg', noise)[1].tobytes()


def _write_samples(root: str, samples: dict) -> None:
    """``infos.pkl`` under ``root`` for ``samples`` = ``{token: {relative path: bytes}}``
    (``None``: the file is referenced but not written); ``*.jpg`` are cameras
    (``samples/<CAM>/...``), the ``*.bin`` the LiDAR sweep."""
    entries = []
    for token, files in samples.items():
        for rel, data in files.items():
            if data is not None:
                os.makedirs(osp.dirname(osp.join(root, rel)), exist_ok=True)
                with open(osp.join(root, rel), 'wb') as f:
                    f.write(data)
        cams = {rel.split('/')[1]: dict(img_path=rel, cam2img=np.eye(3), lidar2cam=np.eye(4),
                                        lidar2img=np.eye(4), cam2ego=np.eye(4))
                for rel in files if rel.endswith('.jpg')}
        lidar = [rel for rel in files if rel.endswith('.bin')][0]
        entries.append(dict(token=token, images=cams, lidar_sweeps=[],
                            lidar_points=dict(lidar_path=lidar, num_pts_feats=5),
                            map_annos=make_map_annos([], [])))
    os.makedirs(osp.join(root, 'v1.0-mini'), exist_ok=True)
    dump_atomic(dict(metainfo=dict(version='v1.0-mini'), data_list=entries),
                osp.join(root, 'infos.pkl'))


def test_preflight_checks_every_sample_file(tmp_path, capsys):
    root = str(tmp_path / 'nus')
    jpg = _jpeg()
    _write_samples(root, {
        'good': {'samples/CAM_FRONT/g.jpg': jpg, 'samples/CAM_BACK/g.jpg': jpg,
                 'samples/LIDAR_TOP/g.bin': bytes(2 * 5 * 4)},
        'bad': {'samples/CAM_FRONT/t.jpg': jpg[:len(jpg) // 2], 'samples/CAM_BACK/m.jpg': None,
                'samples/LIDAR_TOP/b.bin': bytes(30)}})
    pipeline = [dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5),
                dict(type='LoadMultiViewImages')]
    loader = dict(batch_size=1, num_workers=0, collate_fn=dict(type='pseudo_collate'),
                  sampler=dict(type='DefaultSampler', shuffle=False),
                  dataset=dict(type='NuScenesMapDataset', data_root=root,
                               ann_file='infos.pkl', pipeline=pipeline))
    cfg = write_toy_config(tmp_path / 'c.py', str(tmp_path / 'work'), train_dataloader=loader)
    preflight = _tool('preflight')
    for flags, truncated in (([], 'truncated'), (['--decode-images'], 'does not decode')):
        assert preflight.main([cfg, *flags]) == 1
        out = capsys.readouterr().out
        failed = [line for line in out.splitlines() if line.startswith('FAIL')]
        assert {line.split()[1] for line in failed} == {'files'}, out
        for rel, why in (('samples/CAM_FRONT/t.jpg', truncated),
                         ('samples/CAM_BACK/m.jpg', 'missing'),
                         ('samples/LIDAR_TOP/b.bin', '30 bytes is not a whole number')):
            assert any(f'sample bad: {osp.join(root, rel)}: {why}' in line
                       for line in failed), (rel, out)
        assert '3 of 6 files of 2 samples usable' in failed[-1] and '/g.' not in out


def test_bad_image_in_dataloader_worker_is_a_one_line_user_error(tmp_path, capsys):
    from torch.utils.data import DataLoader, Subset
    root = str(tmp_path)
    _write_samples(root, {
        'tok_corrupt': {'samples/CAM_FRONT/c.jpg': b'\xff\xd8 not a jpeg',
                        'samples/LIDAR_TOP/c.bin': None},
        'tok_missing': {'samples/CAM_FRONT/m.jpg': None, 'samples/LIDAR_TOP/m.bin': None}})
    dataset = NuScenesMapDataset(ann_file='infos.pkl', data_root=root, test_mode=True,
                                 pipeline=[LoadMultiViewImages()])
    for i, (token, rel) in enumerate([('tok_corrupt', 'c.jpg'), ('tok_missing', 'm.jpg')]):
        loader = DataLoader(Subset(dataset, [i]), num_workers=1, collate_fn=pseudo_collate)
        err = _cli_error(capsys, lambda _: next(iter(loader)), None)
        assert err.count('\n') == 1 and 'Traceback' not in err and 'worker' not in err, err
        assert osp.join(root, 'samples/CAM_FRONT', rel) in err and token in err, err


def test_runtime_dict_keys_are_checked_against_their_consumer(tmp_path, capsys):
    cfg = Config.fromfile(write_toy_config(tmp_path / 'c.py', str(tmp_path / 'work')))
    for bad, hint in [('auto_scale_lr.enabel', 'Runner.scale_lr (did you mean enable?)'),
                      ('checkpoint_check.allow_mising', 'did you mean allow_missing?'),
                      ('env_cfg.cudnn_benchmrk', 'did you mean cudnn_benchmark?'),
                      ('train_cfg.max_epoch', 'EpochBasedTrainLoop (did you mean max_epochs'),
                      ('default_hooks.checkpoint.intervall', 'did you mean interval'),
                      ('+randomness.sed', 'Runner.set_randomness (did you mean seed')]:
        with pytest.raises(ConfigCheckError, match=re.escape(hint)) as err:
            validate_cfg_options(cfg, {bad: 1})
        assert bad.lstrip('+') in str(err.value)
    # keys the consumer takes pass, present in the config or not
    validate_cfg_options(cfg, {'default_hooks.checkpoint.max_keep_ckpts': 2,
                               'env_cfg.resource_limit': 4096, 'train_cfg.val_begin': 2})
    err = _cli_error(capsys, train_tool.main, [cfg.filename, '--cfg-options',
                                               'train_cfg.max_epoch=1'])
    assert 'did you mean max_epochs?' in err and not osp.exists(tmp_path / 'work')

    # the same typos written in a config file: train and preflight refuse it
    typos = write_toy_config(tmp_path / 'typos.py', str(tmp_path / 'work'),
                             env_cfg=dict(cudnn_benchmrk=True),
                             auto_scale_lr=dict(enabel=True, base_batch_size=2))
    err = _cli_error(capsys, train_tool.main, [typos])
    assert 'env_cfg.cudnn_benchmrk' in err and 'auto_scale_lr.enabel' in err, err
    assert _tool('preflight').main([typos]) == 2
    out = capsys.readouterr().out
    assert 'FAIL  config' in out and 'did you mean cudnn_benchmark?' in out, out
    assert _tool('preflight').main([cfg.filename, '--cfg-options',
                                    'checkpoint_check.allow_mising=x']) == 2
    assert 'did you mean allow_missing?' in capsys.readouterr().out


@MODELS.register_module(force=True)
class ToyNaNGradientModel(ToyMapModel):
    """The toy with an extra loss that is 0 but whose gradient is NaN (d sqrt(u) at u = 0,
    times du/dw = 0): how a too-large learning rate first shows, loss finite, grad_norm NaN."""

    def forward(self, inputs, data_samples=None, mode: str = 'loss'):
        out = super().forward(inputs, data_samples, mode)
        if mode == 'loss':
            out['loss_nan_grad'] = (self.map_head.weight * 0).sum().sqrt()
        return out


def test_nan_gradient_with_finite_loss_stops_training(tmp_path, capsys):
    cfg = write_toy_config(tmp_path / 'c.py', str(tmp_path / 'work'), max_epochs=1,
                           model=dict(type='ToyNaNGradientModel'))
    err = _cli_error(capsys, train_tool.main, [cfg])
    assert 'training diverged at iteration 1 (epoch 1): grad_norm = nan;' in err, err
    assert 'no checkpoint was saved' in err
    assert not [f for f in os.listdir(tmp_path / 'work') if f.endswith('.pth')]


def test_divergence_stops_before_any_checkpoint_is_written(toy, tmp_path, capsys):
    work = str(tmp_path / 'work')
    shutil.copytree(toy['work_dir'], work)
    saved = {name: open(osp.join(work, name), 'rb').read()
             for name in os.listdir(work) if name.endswith('.pth')}
    assert {'best_model.pth', 'checkpoint_epoch_1.pth', 'final_model.pth'} <= set(saved)
    err = _cli_error(capsys, train_tool.main, [
        toy['cfg'], '--work-dir', work, '--cfg-options', 'optim_wrapper.optimizer.lr=1e20',
        f'load_from={osp.join(work, "checkpoint_epoch_1.pth")}'])
    assert err.count('\n') == 1 and 'training diverged at iteration 2 ' in err, err
    assert 'checkpoint_epoch_1.pth' in err and 'matching cost' not in err
    now = {name: open(osp.join(work, name), 'rb').read()
           for name in os.listdir(work) if name.endswith('.pth')}
    assert now == saved  # nothing new, nothing overwritten: best_model.pth byte-identical
