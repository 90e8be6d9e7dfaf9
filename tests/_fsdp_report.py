"""``ShardReportHook``: what each rank of a sharded run holds, for tests/test_fsdp2_training.py.
Imported by the test configs through ``custom_imports`` (``tests/`` on ``PYTHONPATH``)."""
from __future__ import annotations

import hashlib
import json
import os.path as osp

import torch
from mmdet3d.registry import HOOKS
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

LLM_PREFIX = 'bridge.llm.'


def _local_numel(t: torch.Tensor) -> int:
    return t.to_local().numel() if isinstance(t, DTensor) else t.numel()


@HOOKS.register_module()
class ShardReportHook(Hook):
    """Write ``<work_dir>/shards_rank<r>.json``: the FSDP units, the trained LLM parameters'
    global and local element counts and their AdamW state's local count after the first
    step, and a digest of torch's random state at the start of each epoch."""

    def __init__(self) -> None:
        self.report: dict = dict(rng={})

    def before_train_epoch(self, runner) -> None:
        digest = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()
        self.report['rng'][str(runner.epoch)] = digest

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if 'llm_numel' in self.report:
            return
        model, optimizer = runner.model, runner.optim_wrapper.optimizer
        params = [p for n, p in model.named_parameters()
                  if n.startswith(LLM_PREFIX) and p.requires_grad]
        state = [v for p in params for k, v in optimizer.state[p].items()
                 if k in ('exp_avg', 'exp_avg_sq')]
        self.report.update(
            units=[n for n, m in model.named_modules() if isinstance(m, FSDPModule)],
            llm_numel=sum(p.numel() for p in params),
            llm_local_numel=sum(_local_numel(p) for p in params),
            llm_dtypes=sorted({str(p.dtype) for p in params}),
            adam_local_numel=sum(_local_numel(v) for v in state))

    def after_train(self, runner) -> None:
        with open(osp.join(runner.work_dir, f'shards_rank{get_rank()}.json'), 'w') as f:
            json.dump(self.report, f)
