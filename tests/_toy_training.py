"""A tiny registered model, dataset and metric with MapLLaVA's shapes, for the training
infrastructure tests (tools, hooks, runner) until the real model and dataset are cheap to
run. Parameter names mirror the real groups: ``neck`` (Q-Former), ``bridge.map_queries``,
``bridge.llm`` (frozen), ``map_head``. Imported by configs through ``custom_imports``.
"""
from __future__ import annotations

import os.path as osp
import uuid

import numpy as np
import torch
import torch.nn as nn
from mmdet3d.registry import DATASETS, HOOKS, METRICS, MODELS
from mmdet3d.structures import Det3DDataSample
from mmengine.dist import get_rank
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.structures import InstanceData
from torch.utils.data import Dataset

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSES = ('divider', 'ped_crossing', 'boundary')
NUM_QUERIES, NUM_PTS = 4, 5
TOY_LR_GROUPS = dict(qformer='neck', queries='bridge.map_queries', decoder='map_head',
                     llm='bridge.llm')


class _Bridge(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.map_queries = nn.Parameter(torch.zeros(NUM_QUERIES, dim))
        self.llm = nn.Linear(dim, dim)
        self.llm.requires_grad_(False)


@MODELS.register_module()
class ToyMapModel(BaseModel):
    """Predicts polylines from a 4-vector; losses named like MapLLaVA's.

    ``dropout`` > 0 makes training draw from torch's generator, as the real model does.
    """

    def __init__(self, dim: int = 8, dropout: float = 0.0, data_preprocessor=None,
                 init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.dropout = dropout
        gen = torch.Generator().manual_seed(0)
        self.neck = nn.Linear(4, dim)
        self.bridge = _Bridge(dim)
        self.map_head = nn.Linear(dim, NUM_PTS * 2 + len(CLASSES))
        for p in self.parameters():
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def _out(self, inputs: list) -> tuple:
        x = self.neck(torch.stack(inputs))
        if self.dropout:
            x = nn.functional.dropout(x, self.dropout, self.training)
        x = x[:, None] + self.bridge.map_queries[None]
        out = self.map_head(self.bridge.llm(x))
        return out[..., :NUM_PTS * 2].unflatten(-1, (NUM_PTS, 2)), out[..., NUM_PTS * 2:]

    def forward(self, inputs, data_samples=None, mode: str = 'loss'):
        pts, logits = self._out(inputs)
        if mode == 'loss':
            target = torch.stack([ds.gt_instances_3d.polylines[:NUM_QUERIES]
                                  for ds in data_samples])
            labels = torch.stack([ds.gt_instances_3d.labels[:NUM_QUERIES]
                                  for ds in data_samples])
            d_pred, d_gt = pts.diff(dim=2), target.diff(dim=2)
            return dict(loss_cls=nn.functional.cross_entropy(logits.flatten(0, 1),
                                                             labels.flatten()),
                        loss_pts=(pts - target).abs().mean(),
                        loss_dir=(1 - nn.functional.cosine_similarity(d_pred, d_gt, -1)).mean())
        scores, labels = logits.softmax(-1).max(-1)
        for ds, p, s, lab in zip(data_samples, pts, scores, labels):
            ds.pred_instances_3d = InstanceData(polylines=p.detach(), scores=s.detach(),
                                                labels=lab)
        return data_samples


@DATASETS.register_module()
class ToyMapDataset(Dataset):
    """``size`` samples: inputs (4,), GT polylines that are a fixed function of the inputs.

    ``jitter`` > 0 adds noise from numpy's global generator to the inputs, like a random
    augmentation in a data pipeline.
    """

    METAINFO = dict(classes=CLASSES, roi_size=(30., 60.))

    def __init__(self, size: int = 8, jitter: float = 0.0, pipeline=None, **kwargs):
        self.size = size
        self.jitter = jitter
        self.metainfo = dict(self.METAINFO)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, generator=g)
        t = torch.linspace(-1, 1, NUM_PTS)
        lines = torch.stack([torch.stack([t * 10 + x[k], t * 20 * x[(k + 1) % 4]], -1)
                             for k in range(NUM_QUERIES)])
        if self.jitter:
            x = x + self.jitter * torch.from_numpy(np.random.randn(4)).float()
        sample = Det3DDataSample(metainfo=dict(token=f'tok{i:03d}', classes=CLASSES,
                                               roi_size=(30., 60.)))
        sample.gt_instances_3d = InstanceData(polylines=lines,
                                              labels=torch.arange(NUM_QUERIES) % 3)
        return dict(inputs=x, data_samples=sample)


@METRICS.register_module()
class ToyScriptedMetric(BaseMetric):
    """Returns ``mAP`` from ``scores`` in turn (one per evaluation), to test best-model logic."""

    default_prefix = 'toy'

    def __init__(self, scores=(0.1, 0.2, 0.3, 0.4), **kwargs):
        super().__init__(**kwargs)
        self.scores, self.calls = list(scores), 0

    def process(self, data_batch, data_samples) -> None:
        self.results.extend(ds['token'] for ds in data_samples)

    def compute_metrics(self, results: list) -> dict:
        score = self.scores[min(self.calls, len(self.scores) - 1)]
        self.calls += 1
        return dict(mAP=score, num_samples=len(results))


@HOOKS.register_module()
class ToyDumpWeightsHook(Hook):
    """Save each rank's final weights as ``<work_dir>/rank<r>.pth`` (distributed test)."""

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save(model.state_dict(), osp.join(runner.work_dir, f'rank{get_rank()}.pth'))


def toy_config(work_dir: str, max_epochs: int = 2, stochastic: bool = False,
               **overrides) -> dict:
    """A full runner config on the project's runtime + schedule bases.

    ``stochastic``: training draws from the global generators (dropout, input jitter), so
    a resume that puts them in the wrong place changes the weights.
    """
    loader = dict(batch_size=2, num_workers=0, collate_fn=dict(type='pseudo_collate'),
                  sampler=dict(type='DefaultSampler', shuffle=False),
                  dataset=dict(type='ToyMapDataset', size=4))
    noise = 0.5 if stochastic else 0.0
    cfg = dict(
        _base_=[osp.join(REPO_ROOT, 'configs/_base_/default_runtime.py'),
                osp.join(REPO_ROOT, 'configs/_base_/schedules/adamw_cosine_24e.py')],
        custom_imports=dict(imports=['_toy_training', 'projects.MapLLaVA.mapllava.engine',
                                     'projects.MapLLaVA.mapllava.hooks',
                                     'projects.MapLLaVA.mapllava.visualization'],
                            allow_failed_imports=False),
        runner_type='MapRunner',
        work_dir=work_dir,
        model=dict(type='ToyMapModel', dropout=noise),
        train_dataloader=dict(loader, sampler=dict(type='DefaultSampler', shuffle=True),
                              dataset=dict(type='ToyMapDataset', size=8, jitter=noise)),
        val_dataloader=loader, test_dataloader=loader,
        val_evaluator=dict(type='ToyScriptedMetric'),
        test_evaluator=dict(type='ToyScriptedMetric'),
        train_cfg=dict(max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(lr=1e-2), paramwise_cfg=dict(custom_keys={
            'neck': dict(lr_mult=0.1), 'bridge.map_queries': dict(lr_mult=1.0)})),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2),
            dict(type='CosineAnnealingLR', T_max=16, by_epoch=False, begin=0, end=16)],
        default_hooks=dict(checkpoint=dict(type='MapCheckpointHook', interval=1,
                                           save_best='mAP'),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='GroupLRLoggerHook', lr_groups=TOY_LR_GROUPS)],
        env_cfg=dict(mp_cfg=dict(mp_start_method='fork')),
        # unique names: mmengine keeps visualizers and loggers as named global instances
        experiment_name=f'toy_{uuid.uuid4().hex[:8]}',
        visualizer=dict(type='Visualizer', name=f'vis_{uuid.uuid4().hex[:8]}',
                        vis_backends=[dict(type='LocalVisBackend')]),
        log_level='WARNING')
    cfg.update(overrides)
    return cfg


def write_toy_config(path: str, work_dir: str, **kwargs) -> str:
    """Write :func:`toy_config` as a config file (``_base_`` inheritance needs a file)."""
    cfg = toy_config(work_dir, **kwargs)
    with open(path, 'w') as f:
        f.writelines(f'{key} = {value!r}\n' for key, value in cfg.items())
    return str(path)
