"""MapRunner + MapCheckpointHook + GroupLRLoggerHook on the toy model through mmengine's
Runner: checkpoint names, atomic saves, strict loading, exact resume, per-group lr logging."""
import glob
import json
import os.path as osp
import random

import numpy as np
import pytest
import torch
from _toy_training import write_toy_config
from mmengine.config import Config
from mmengine.fileio import LocalBackend
from mmengine.runner import Runner

from projects.MapLLaVA.mapllava.engine import (
    CheckpointMismatchError,
    CheckpointResumeError,
    MapRunner,
)
from projects.MapLLaVA.mapllava.engine.cli import build_runner
from projects.MapLLaVA.mapllava.hooks import MapCheckpointHook


def _runner(tmp_path, name='run', **kwargs):
    work_dir = str(tmp_path / name)
    cfg = Config.fromfile(write_toy_config(tmp_path / f'{name}.py', work_dir, **kwargs))
    return build_runner(cfg)


def _scalars(work_dir):
    (path,) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """3 epochs; validation mAP 0.3, 0.5, 0.4 -> best at epoch 2."""
    tmp = tmp_path_factory.mktemp('trained')
    runner = _runner(tmp, max_epochs=3,
                     val_evaluator=dict(type='ToyScriptedMetric', scores=[0.3, 0.5, 0.4]),
                     visualizer=dict(type='Visualizer', name='vis_trained',
                                     vis_backends=[dict(type='LocalVisBackend'),
                                                   dict(type='TensorboardVisBackend')]))
    runner.train()
    return runner


def test_checkpoint_names(trained):
    wd = trained.work_dir
    names = sorted(osp.basename(p) for p in glob.glob(osp.join(wd, '*.pth*')))
    assert names == ['best_model.pth', 'checkpoint_epoch_1.pth', 'checkpoint_epoch_2.pth',
                     'checkpoint_epoch_3.pth', 'final_model.pth']  # no .tmp left
    with open(osp.join(wd, 'last_checkpoint')) as f:
        assert f.read() == osp.join(wd, 'checkpoint_epoch_3.pth')
    best = torch.load(osp.join(wd, 'best_model.pth'), weights_only=True)
    assert best['meta']['epoch'] == 2 and best['meta']['best_score'] == 0.5
    assert best['meta']['best_metric'] == 'toy/mAP' and 'optimizer' not in best
    final = torch.load(osp.join(wd, 'final_model.pth'), weights_only=True)
    assert final['meta']['epoch'] == 3 and final['meta']['iter'] == 12
    for key, value in trained.model.state_dict().items():
        torch.testing.assert_close(final['state_dict'][key], value)
    last = torch.load(osp.join(wd, 'checkpoint_epoch_3.pth'), weights_only=True)
    assert {'optimizer', 'param_schedulers', 'message_hub'} <= set(last)
    assert last['message_hub']['runtime_info']['best_score'] == 0.5


def test_resolved_config_in_work_dir(trained):
    cfg = Config.fromfile(osp.join(trained.work_dir, 'config.py'))
    assert cfg.model.type == 'ToyMapModel' and cfg.train_cfg.max_epochs == 3


def test_group_lrs_and_current_losses_logged(trained):
    rows = [r for r in _scalars(trained.work_dir) if 'iter' in r]
    assert len(rows) == 12
    for row in rows:
        assert row['qformer_lr'] == pytest.approx(0.1 * row['queries_lr'])
        assert row['decoder_lr'] == pytest.approx(row['queries_lr'])
        assert 'llm_lr' not in row  # frozen: no trainable parameters
        for key in ('loss', 'loss_cls', 'loss_pts', 'loss_dir'):
            assert key in row and f'{key}_cur' in row
    # running mean vs current value differ once the window holds several iterations
    assert any(r['loss'] != pytest.approx(r['loss_cur']) for r in rows[1:])
    lrs = [r['queries_lr'] for r in rows]
    assert lrs[0] < lrs[1] and lrs[-1] < max(lrs)  # warm-up, then cosine decay


def test_tensorboard_gets_group_lrs(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (events,) = glob.glob(osp.join(trained.work_dir, '*', 'vis_data', 'events.out.*'))
    acc = EventAccumulator(events)
    acc.Reload()
    assert {'qformer_lr', 'queries_lr', 'loss_cls', 'loss_cur'} <= set(acc.Tags()['scalars'])


def _crashing_put(self, obj, filepath):
    """Write half the bytes, then die like a killed process would."""
    with open(filepath, 'wb') as f:
        f.write(obj[:len(obj) // 2])
    raise KeyboardInterrupt('killed mid-save')


@pytest.mark.parametrize('runner_cls', [MapRunner, Runner])
def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch, runner_cls):
    runner = _runner(tmp_path, max_epochs=1, runner_type=runner_cls.__name__)
    runner.train()
    path = osp.join(runner.work_dir, 'checkpoint_epoch_1.pth')
    before = torch.load(path, weights_only=True)['state_dict']
    monkeypatch.setattr(LocalBackend, 'put', _crashing_put)
    with pytest.raises(KeyboardInterrupt):
        runner.save_checkpoint(runner.work_dir, 'checkpoint_epoch_1.pth')
    monkeypatch.undo()
    if runner_cls is Runner:  # mmengine alone truncates the file in place
        with pytest.raises(Exception):
            torch.load(path, weights_only=True)
        return
    after = torch.load(path, weights_only=True)['state_dict']
    assert after.keys() == before.keys()
    assert not osp.exists(path + '.tmp')
    resumed = _runner(tmp_path, max_epochs=2)  # auto-resume through last_checkpoint
    resumed.train()
    assert resumed.iter == 8


def test_crash_mid_save_with_one_kept_checkpoint(tmp_path, monkeypatch):
    """mmengine prunes before saving; with max_keep_ckpts=1 that would leave nothing."""
    runner = _runner(tmp_path, max_epochs=1, default_hooks=dict(checkpoint=dict(
        type='MapCheckpointHook', interval=1, max_keep_ckpts=1)))
    runner.train()
    (hook,) = [h for h in runner.hooks if isinstance(h, MapCheckpointHook)]
    monkeypatch.setattr(LocalBackend, 'put', _crashing_put)
    with pytest.raises(KeyboardInterrupt):
        hook._save_checkpoint_with_step(runner, 2, dict(epoch=2, iter=8))
    monkeypatch.undo()
    path = osp.join(runner.work_dir, 'checkpoint_epoch_1.pth')
    assert torch.load(path, weights_only=True)['meta']['epoch'] == 1
    with open(osp.join(runner.work_dir, 'last_checkpoint')) as f:
        assert f.read() == path
    hook._save_checkpoint_with_step(runner, 2, dict(epoch=2, iter=8))  # pruned only now
    assert not osp.exists(path)
    assert osp.exists(osp.join(runner.work_dir, 'checkpoint_epoch_2.pth'))


def test_resume_is_exact(tmp_path):
    straight = _runner(tmp_path, 'straight', max_epochs=2)
    straight.train()
    first = _runner(tmp_path, 'split', max_epochs=1)
    first.train()
    assert first.iter == 4
    second = _runner(tmp_path, 'split', max_epochs=2, resume=True)
    second.train()
    assert second.iter == 8
    ref, got = straight.model.state_dict(), second.model.state_dict()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-6, atol=1e-7)


def _weights(path):
    return torch.load(path, weights_only=True)['state_dict']


def _differing(path, ref_path):
    """Names of the tensors that are not bit-identical between two checkpoints."""
    got, ref = _weights(path), _weights(ref_path)
    assert got.keys() == ref.keys()
    return [key for key in ref if not torch.equal(got[key], ref[key])]


def test_resume_is_exact_with_validation_and_best_model_update(tmp_path):
    """Dropout + input jitter, validation after every epoch; 2 + 1 + 1 epochs == 4.

    Epoch 2 does not improve best_model.pth, so its checkpoint is the one written before
    validation; the resumed epoch 3 improves it, which re-saves checkpoint_epoch_3.pth
    from inside validation, and the last run resumes from that file.
    """
    scores = [0.5, 0.4, 0.6, 0.3]
    straight = _runner(tmp_path, 'straight', max_epochs=4, stochastic=True,
                       val_evaluator=dict(type='ToyScriptedMetric', scores=scores))
    straight.train()
    for epochs, run_scores in [(2, scores[:2]), (3, scores[2:3]), (4, scores[3:])]:
        split = _runner(tmp_path, 'split', max_epochs=epochs, stochastic=True,
                        resume=epochs > 2,
                        val_evaluator=dict(type='ToyScriptedMetric', scores=run_scores))
        split.train()
    ref_dir, wd = straight.work_dir, split.work_dir
    assert split.iter == 16
    best = torch.load(osp.join(wd, 'best_model.pth'), weights_only=True)
    assert best['meta']['epoch'] == 3 and best['meta']['best_score'] == 0.6
    assert _differing(osp.join(wd, 'best_model.pth'), osp.join(ref_dir, 'best_model.pth')) == []
    final = osp.join(wd, 'final_model.pth')
    assert len(_weights(final)) == 7
    assert _differing(final, osp.join(ref_dir, 'final_model.pth')) == []  # 0 of 7 differ


def _worker_loader(**extra) -> dict:
    """The toy train loader with 2 worker processes and input jitter drawn in them."""
    return dict(batch_size=2, num_workers=2, persistent_workers=False,
                collate_fn=dict(type='pseudo_collate'),
                sampler=dict(type='DefaultSampler', shuffle=True),
                dataset=dict(type='ToyMapDataset', size=8, jitter=0.5), **extra)


def _epoch_inputs(runner, epochs: int = 2) -> list:
    loader = runner.build_dataloader(runner.cfg.train_dataloader, seed=runner.seed)
    return [torch.stack([x for batch in loader for x in batch['inputs']]) for _ in range(epochs)]


def test_worker_augmentations_change_every_epoch_and_resume_exactly(tmp_path):
    """``resumable_worker_init_fn`` (engine/worker_seeding.py): with mmengine's default
    worker seeding (seed + worker id) workers that restart every epoch draw the same
    jitter each epoch; with ours each epoch draws its own, and 2 + 1 epochs equal 3."""
    default = _runner(tmp_path, 'default', train_dataloader=_worker_loader())
    first, second = _epoch_inputs(default)
    assert torch.equal(first.sort(0).values, second.sort(0).values)  # mmengine: replayed
    ours = dict(worker_init_fn=dict(type='resumable_worker_init_fn'))
    first, second = _epoch_inputs(_runner(tmp_path, 'ours', train_dataloader=_worker_loader(
        **ours)))
    assert not torch.equal(first.sort(0).values, second.sort(0).values)
    straight = _runner(tmp_path, 'straight', max_epochs=3, stochastic=True,
                       train_dataloader=_worker_loader(**ours))
    straight.train()
    for epochs in (2, 3):
        split = _runner(tmp_path, 'split', max_epochs=epochs, stochastic=True,
                        resume=epochs > 2, train_dataloader=_worker_loader(**ours))
        split.train()
    final = osp.join(split.work_dir, 'final_model.pth')
    assert _differing(final, osp.join(straight.work_dir, 'final_model.pth')) == []


def test_worker_seed_mixes_in_the_rank(monkeypatch):
    """Same PyTorch worker seed on two ranks (every rank starts from the same seed):
    different streams; the same rank again: the same stream."""
    from projects.MapLLaVA.mapllava.engine import resumable_worker_init_fn

    def draws(rank: str) -> list:
        monkeypatch.setenv('RANK', rank)
        torch.manual_seed(1234)  # what the DataLoader does in a worker: base_seed + id
        resumable_worker_init_fn(0)
        return [random.random(), float(np.random.rand()), float(torch.rand(()))]

    r0, r1 = draws('0'), draws('1')
    assert all(a != b for a, b in zip(r0, r1)) and draws('0') == r0


ITER_CHECKPOINTS = dict(checkpoint=dict(type='MapCheckpointHook', by_epoch=False, interval=1,
                                         max_keep_ckpts=-1),
                        logger=dict(type='LoggerHook', interval=1))


def test_resume_iteration_checkpoint_mid_epoch(tmp_path):
    """4 iterations per epoch; resuming iteration 5 (1 batch into epoch 2) or iteration 4
    (epoch 1's batches done, its end-of-epoch hooks and validation not) ends like the
    uninterrupted run: iteration 8, identical weights."""
    straight = _runner(tmp_path, 'straight', max_epochs=2, stochastic=True,
                       default_hooks=ITER_CHECKPOINTS)
    straight.train()
    ref = osp.join(straight.work_dir, 'final_model.pth')
    for it in (5, 4):
        resumed = _runner(tmp_path, f'from{it}', max_epochs=2, stochastic=True, resume=True,
                          load_from=osp.join(straight.work_dir, f'checkpoint_iter_{it}.pth'),
                          default_hooks=ITER_CHECKPOINTS)
        resumed.train()
        final = osp.join(resumed.work_dir, 'final_model.pth')
        assert resumed.iter == 8 and torch.load(final, weights_only=True)['meta']['iter'] == 8
        assert _differing(final, ref) == [], it


def test_plain_epoch_loop_refuses_mid_epoch_checkpoint(tmp_path):
    """mmengine's EpochBasedTrainLoop would train epoch 2 again from its first batch."""
    first = _runner(tmp_path, 'first', default_hooks=ITER_CHECKPOINTS,
                    train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=1))
    first.train()
    ckpt = osp.join(first.work_dir, 'checkpoint_iter_3.pth')
    resumed = _runner(tmp_path, 'again', resume=True, load_from=ckpt,
                      train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=2))
    with pytest.raises(CheckpointResumeError) as err:
        resumed.train()
    msg = str(err.value)
    assert ckpt in msg and 'MapEpochBasedTrainLoop' in msg and 'by_epoch' in msg
    assert '\n' not in msg
    assert resumed.iter == 3  # refused before training anything


def test_mismatched_checkpoint_names_keys(tmp_path):
    runner = _runner(tmp_path, max_epochs=1)
    state = runner.model.state_dict()
    state['map_head.extra'] = torch.zeros(1)
    del state['neck.bias']
    state['map_head.weight'] = torch.zeros(3, 3)
    bad = tmp_path / 'bad.pth'
    torch.save(dict(state_dict=state), bad)
    with pytest.raises(CheckpointMismatchError) as err:
        runner.load_checkpoint(str(bad))
    msg = str(err.value)
    assert 'neck.bias' in msg and 'map_head.extra' in msg and 'map_head.weight' in msg
    allowed = _runner(tmp_path, 'allowed', max_epochs=1, checkpoint_check=dict(
        allow_missing=['neck.*'], allow_unexpected=['*.extra']))
    del state['map_head.weight']
    torch.save(dict(state_dict=state), bad)
    with pytest.raises(CheckpointMismatchError, match='map_head.weight'):
        allowed.load_checkpoint(str(bad))  # still missing, and not allowed
    state['map_head.weight'] = runner.model.state_dict()['map_head.weight']
    torch.save(dict(state_dict=state), bad)
    allowed.load_checkpoint(str(bad))
