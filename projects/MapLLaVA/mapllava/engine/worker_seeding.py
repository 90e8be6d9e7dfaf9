"""``resumable_worker_init_fn``: DataLoader worker seeds that change every epoch and resume.

mmengine's default ``worker_init_fn`` seeds every worker with ``seed + worker_id (+ rank)``
whenever ``randomness.seed`` is set, overriding PyTorch's own per-iterator seeding. Workers
that are not persistent then replay the same augmentation stream every epoch; persistent
ones continue their stream across epochs, but a resumed process starts it again from epoch
1's position, so a resumed run augments differently from an uninterrupted one.

PyTorch seeds each worker from a ``base_seed`` that the main process draws from its torch
generator when an epoch's iterator is created, and ``MapRunner`` checkpoints and restores
that generator. Keeping PyTorch's seed (``torch.initial_seed()`` in the worker, i.e.
``base_seed + worker_id``) and mixing in the rank therefore gives each epoch, worker and rank
its own stream, and a resumed epoch the stream of the uninterrupted run. This needs
``persistent_workers=False`` in the train dataloader (a persistent worker's seed is the one of
the epoch it was started in).
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.registry import FUNCTIONS


def _rank() -> int:
    """The process's rank; a spawned worker has no process group, but the launcher's env."""
    try:
        rank = get_rank()
    except RuntimeError:
        rank = 0
    return rank or int(os.environ.get('RANK', 0))


@FUNCTIONS.register_module()
def resumable_worker_init_fn(worker_id: int) -> None:
    """Seed python, numpy and torch in a DataLoader worker from PyTorch's per-epoch worker
    seed and the rank (``train_dataloader.worker_init_fn=dict(type=...)``)."""
    seeds = np.random.SeedSequence([torch.initial_seed(), _rank()]).generate_state(4)
    random.seed(int(seeds[0]))
    np.random.seed(seeds[1:3])
    torch.manual_seed(int(seeds[3]))
