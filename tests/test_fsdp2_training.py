"""Stage 3's sharded path on CPU: ``tools/dist_train.sh`` starts 2 gloo ranks that train the
tiny MapLLaVA with its LLM in ``full`` mode under ``FSDP2Strategy`` (``MapFlexibleRunner``),
as a user would launch the 7B stage 3.

Runs (once per module): a sharded run of 2 epochs (4 steps, validation after each epoch), a
sharded run resumed from its epoch-1 checkpoint, and a single-process ``MapRunner`` reference
with the same global batch (4). For the reference to be the same computation the model is
made batch-independent: GroupNorm for BatchNorm and no dropout, so 2 ranks x 2 samples
compute what 1 process x 4 samples does (MapTR's positives are averaged over ranks).
"""
import json
import os
import os.path as osp
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_training_tools import _free_port, _tool

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FSDP_TINY = osp.join(REPO_ROOT, 'configs', 'mapllava',
                     'mapllava_tiny-full-fsdp_2xb2-demo_synthetic-nus-map.py')
train_tool, test_tool, export_tool = _tool('train'), _tool('test'), _tool('export_checkpoint')

pytestmark = pytest.mark.slow

CONFIG = '''_base_ = [{base!r}]
custom_imports = dict(imports=['projects.MapLLaVA.mapllava', '_fsdp_report'],
                      allow_failed_imports=False)
data_root = {root!r}
work_dir = {work_dir!r}
pipeline = [
    dict(type='LoadMultiViewImages'),
    dict(type='LoadMapAnnotations'),
    dict(type='MapRangeFilter'),
    dict(type='MapPermutationTargets', num_pts=20),
    dict(type='MultiViewResize', scale=(160, 90)),
    dict(type='PackMapInputs'),
]
train_dataloader = dict(batch_size={batch},
                        dataset=dict(data_root=data_root, pipeline=pipeline, indices=8))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = val_dataloader
chamfer = dict(type='ChamferMapMetric', ann_file=data_root + 'nuscenes_map_infos_val.pkl')
val_evaluator = [chamfer, dict(type='DumpMapPredictions', out_file_path=work_dir + '/val.pkl')]
test_evaluator = chamfer
train_cfg = dict(max_epochs=2, val_interval=1)
default_hooks = dict(logger=dict(interval=1))
custom_hooks = [dict(type='GroupLRLoggerHook'), dict(type='ShardReportHook')]
gn = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    bev_encoder=dict(img_backbone=dict(norm_cfg=gn), img_neck=dict(norm_cfg=gn),
                     view_transform=dict(norm_cfg=gn)),
    neck=dict(qformer_cfg=dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
randomness = dict(seed=0)
log_level = 'WARNING'
# AdamW's first step is lr * sign(grad) for every element, however small the gradient: for
# a gradient that is rounding noise (~0; 2 ranks and 1 process sum it in another order) the
# sign is a coin flip and the runs differ by up to 2 lr there (5 of 8192 elements of a
# ResNet downsample conv did). eps far above that noise keeps such steps negligible; steps
# of gradients much larger than eps are unchanged. 1e-6 was not far enough: with every process
# on one thread (OMP_NUM_THREADS=1) 19 weights of the decoder's deformable-attention sampling
# offsets (mmcv initialises them to zero; they had moved ~1e-4) ended up to 1.6e-4 apart; with 1e-5
# the largest difference is 3.6e-6 (1 thread) and 9.3e-6 (2 threads), under the atol of 3e-5.
optim_wrapper = dict(optimizer=dict(eps=1e-5))
'''
# the same model and global batch in one process, with mmengine's Runner (MapRunner)
SINGLE = '''runner_type = 'MapRunner'
val_cfg = None
val_dataloader = None
val_evaluator = None
custom_hooks = [dict(type='GroupLRLoggerHook')]
'''


def _config(path, root: str, work_dir: str, batch: int = 2, extra: str = '') -> str:
    text = CONFIG.format(base=FSDP_TINY, root=root.rstrip('/') + '/', work_dir=work_dir,
                         batch=batch)
    with open(path, 'w') as f:
        f.write(text + extra)
    return str(path)


def _dist_train(cfg: str, cwd, *args: str) -> None:
    """``tools/dist_train.sh cfg 2 [args]`` with 1 thread per rank."""
    env = dict(os.environ, PYTHONPATH=osp.join(REPO_ROOT, 'tests'), PORT=str(_free_port()),
               PYTHON=sys.executable, OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', osp.join(REPO_ROOT, 'tools', 'dist_train.sh'), cfg, '2',
                           *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _grad_norms(work_dir: str) -> list:
    """``grad_norm`` of every iteration, as rank 0 logged it."""
    (run,) = [d for d in os.listdir(work_dir) if osp.isfile(
        osp.join(work_dir, d, 'vis_data', 'scalars.json'))]
    with open(osp.join(work_dir, run, 'vis_data', 'scalars.json')) as f:
        rows = [json.loads(line) for line in f]
    return [(r['iter'], r['grad_norm']) for r in rows if 'grad_norm' in r]


def _weights(path: str) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def runs(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('fsdp2')
    sharded, resumed, single = (str(tmp / name) for name in ('sharded', 'resumed', 'single'))
    _dist_train(_config(tmp / 'sharded.py', synthetic_root, sharded), tmp)
    _dist_train(_config(tmp / 'resumed.py', synthetic_root, resumed), tmp,
                '--resume', osp.join(sharded, 'checkpoint_epoch_1.pth'))
    single_cfg = _config(tmp / 'single.py', synthetic_root, single, batch=4, extra=SINGLE)
    train_tool.main([single_cfg])
    return dict(tmp=tmp, sharded=sharded, resumed=resumed, single=single, single_cfg=single_cfg)


def test_each_rank_holds_half_of_the_llm_and_its_adamw_state(runs):
    reports = []
    for rank in (0, 1):
        with open(osp.join(runs['sharded'], f'shards_rank{rank}.json')) as f:
            reports.append(json.load(f))
    for report in reports:
        # one unit per decoder layer plus the root; fp32 masters
        assert report['units'] == ['', 'bridge.llm.model.layers.0', 'bridge.llm.model.layers.1']
        assert report['llm_dtypes'] == ['torch.float32']
        assert 0.45 < report['llm_local_numel'] / report['llm_numel'] < 0.55
        assert report['adam_local_numel'] == 2 * report['llm_local_numel']
    assert sum(r['llm_local_numel'] for r in reports) == reports[0]['llm_numel']
    assert osp.isdir(osp.join(runs['sharded'], 'checkpoint_epoch_2.pth'))  # a sharded folder


def test_sharded_steps_equal_single_process_steps(runs):
    sharded, single = _grad_norms(runs['sharded']), _grad_norms(runs['single'])
    assert [i for i, _ in sharded] == [i for i, _ in single] == [1, 2, 3, 4]
    np.testing.assert_allclose([g for _, g in sharded], [g for _, g in single], rtol=1e-5)
    got = _weights(osp.join(runs['sharded'], 'final_model.pth'))
    ref = _weights(osp.join(runs['single'], 'final_model.pth'))
    assert got['meta']['iter'] == ref['meta']['iter'] == 4
    # the consolidated export is as lean as a single-process checkpoint: the same keys
    assert got['state_dict'].keys() == ref['state_dict'].keys()
    first = _weights(osp.join(runs['single'], 'checkpoint_epoch_1.pth'))['state_dict']
    key = 'bridge.llm.model.layers.0.mlp.up_proj.weight'
    assert not torch.equal(first[key], ref['state_dict'][key])  # the LLM trained
    for key, value in ref['state_dict'].items():
        torch.testing.assert_close(got['state_dict'][key], value, rtol=1e-4, atol=3e-5,
                                   msg=lambda m, k=key: f'{k}: {m}')


def test_sharded_resume_equals_uninterrupted(runs):
    got = _weights(osp.join(runs['resumed'], 'final_model.pth'))
    ref = _weights(osp.join(runs['sharded'], 'final_model.pth'))
    assert got['meta']['iter'] == 4 and got['state_dict'].keys() == ref['state_dict'].keys()
    for key, value in ref['state_dict'].items():
        torch.testing.assert_close(got['state_dict'][key], value, rtol=0, atol=0,
                                   msg=lambda m, k=key: f'{k}: {m}')
    # the random generators start epoch 2 where the uninterrupted run had them
    digests = []
    for run in ('sharded', 'resumed'):
        with open(osp.join(runs[run], 'shards_rank0.json')) as f:
            digests.append(json.load(f)['rng']['1'])
    assert digests[0] == digests[1]


def test_export_predicts_the_same_in_the_test_tool(runs):
    final = osp.join(runs['sharded'], 'final_model.pth')
    out = str(runs['tmp'] / 'preds.pkl')
    test_tool.main([runs['single_cfg'], final, '--work-dir', str(runs['tmp'] / 'test'),
                    '--out', out])
    with open(out, 'rb') as f:
        single = {r['token']: r for r in pickle.load(f)['results']}
    with open(osp.join(runs['sharded'], 'val.pkl'), 'rb') as f:  # the sharded model's own
        sharded = {r['token']: r for r in pickle.load(f)['results']}
    assert single.keys() == sharded.keys() and len(single) == 4
    for token, pred in sharded.items():
        for field in ('polylines', 'scores'):
            np.testing.assert_allclose(single[token][field], pred[field], rtol=1e-4,
                                       atol=1e-5, err_msg=f'{token} {field}')
        np.testing.assert_array_equal(single[token]['labels'], pred['labels'])
    # the offline export of the last sharded checkpoint is the same lean file
    exported = str(runs['tmp'] / 'epoch_2.pth')
    export_tool.main([osp.join(runs['sharded'], 'checkpoint_epoch_2.pth'), exported])
    got, ref = _weights(exported)['state_dict'], _weights(final)['state_dict']
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
