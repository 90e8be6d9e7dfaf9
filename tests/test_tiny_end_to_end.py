"""The demo's tiny MapLLaVA through the user-facing tools on a small synthetic nuScenes:
train with validation, test with ``--out`` / ``--show-dir``, exact resume, 2-process torchrun."""
import os
import os.path as osp
import pickle

import pytest
import torch
from test_training_tools import _tool, dist_train_two_ranks

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(REPO_ROOT, 'configs', 'mapllava', 'mapllava_tiny_1xb4-demo_synthetic-nus-map.py')
train_tool, test_tool = _tool('train'), _tool('test')

pytestmark = pytest.mark.slow


def write_tiny_config(path, root: str, work_dir: str, batch_size: int = 2, max_epochs: int = 1,
                      extra: str = '') -> str:
    """The demo config pointed at ``root``, at the fixture's image size (160x90)."""
    root = root.rstrip('/') + '/'
    text = f'''_base_ = [{DEMO!r}]
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
train_dataloader = dict(batch_size={batch_size},
                        dataset=dict(data_root=data_root, pipeline=pipeline))
val_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'nuscenes_map_infos_val.pkl')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs={max_epochs})
randomness = dict(seed=0)
log_level = 'WARNING'
{extra}
'''
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def _val_tokens(root):
    with open(osp.join(root, 'nuscenes_map_infos_val.pkl'), 'rb') as f:
        return [e['token'] for e in pickle.load(f)['data_list']]


def test_train_then_test_with_pictures(synthetic_root, tmp_path):
    work = str(tmp_path / 'work')
    cfg = write_tiny_config(tmp_path / 'tiny.py', synthetic_root, work)
    train_tool.main([cfg])
    for name in ('checkpoint_epoch_1.pth', 'best_model.pth', 'final_model.pth', 'config.py'):
        assert osp.isfile(osp.join(work, name)), name

    out, show = str(tmp_path / 'preds.pkl'), str(tmp_path / 'vis')
    test_tool.main([cfg, osp.join(work, 'best_model.pth'), '--work-dir', str(tmp_path / 'test'),
                    '--out', out, '--show-dir', show, '--score-thr', '0.0'])
    tokens = _val_tokens(synthetic_root)
    with open(out, 'rb') as f:
        results = pickle.load(f)['results']
    assert sorted(r['token'] for r in results) == sorted(tokens)
    assert all(r['polylines'].shape == (50, 20, 2) for r in results)
    assert sorted(os.listdir(show)) == sorted(
        f'{t}_{kind}' for t in tokens for kind in ('bev.png', 'cams.jpg'))
    # the same predictions scored offline give the table's keys
    eval_map = _tool('eval_map')
    preds, classes = eval_map.load_predictions(out, ['divider', 'ped_crossing', 'boundary'])
    assert len(preds) == len(tokens) and classes == ('divider', 'ped_crossing', 'boundary')


def test_resume_equals_uninterrupted(synthetic_root, tmp_path):
    """4 iterations + resume + 4 more == 8 uninterrupted (16 train samples, batch 4)."""
    no_val = 'val_cfg = None\nval_dataloader = None\nval_evaluator = None\n'
    straight = str(tmp_path / 'straight')
    train_tool.main([write_tiny_config(tmp_path / 's.py', synthetic_root, straight,
                                       batch_size=4, max_epochs=2, extra=no_val)])
    split = str(tmp_path / 'split')
    train_tool.main([write_tiny_config(tmp_path / 'a.py', synthetic_root, split,
                                       batch_size=4, max_epochs=1, extra=no_val)])
    first = torch.load(osp.join(split, 'final_model.pth'), weights_only=True)
    assert first['meta']['iter'] == 4
    train_tool.main([write_tiny_config(tmp_path / 'b.py', synthetic_root, split,
                                       batch_size=4, max_epochs=2, extra=no_val), '--resume'])
    ref = torch.load(osp.join(straight, 'final_model.pth'), weights_only=True)
    got = torch.load(osp.join(split, 'final_model.pth'), weights_only=True)
    assert got['meta']['iter'] == ref['meta']['iter'] == 8
    assert not torch.equal(first['state_dict']['map_head.reg_branches.0.layers.0.weight'],
                           got['state_dict']['map_head.reg_branches.0.layers.0.weight'])
    for key, value in ref['state_dict'].items():
        torch.testing.assert_close(got['state_dict'][key], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, k=key: f'{k}: {m}')


def test_dist_train_two_cpu_ranks_end_identical(synthetic_root, tmp_path):
    work = tmp_path / 'work'
    extra = ("custom_imports = dict(imports=['projects.MapLLaVA.mapllava', '_toy_training'], "
             "allow_failed_imports=False)\n"
             "custom_hooks = [dict(type='GroupLRLoggerHook'), dict(type='ToyDumpWeightsHook')]\n")
    cfg = write_tiny_config(tmp_path / 'dist.py', synthetic_root, str(work), extra=extra)
    rank0, rank1 = dist_train_two_ranks(cfg, tmp_path, work, timeout=600)
    final = torch.load(work / 'final_model.pth', weights_only=True)
    assert final['meta']['iter'] == 4  # 16 samples over 2 ranks x batch 2
    # parameters see all-reduced gradients; BN running statistics stay per rank
    params = [k for k in rank0 if not k.endswith(('running_mean', 'running_var',
                                                   'num_batches_tracked'))]
    for key in params:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0,
                                   msg=lambda m, k=key: f'{k}: {m}')
