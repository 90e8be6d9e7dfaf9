"""The random-number state that a resumed run needs to continue exactly.

mmengine resumes the seed but not the generators' positions, so after a resume dropout
masks and random augmentations differ from an uninterrupted run. These two functions put
the python, numpy, torch (and CUDA) states into a checkpoint's ``meta`` as plain lists,
ints and tensors, which ``torch.load(weights_only=True)`` reads without any allow-listing.
The state is the saving process's (rank 0); with mmengine's default (no
``diff_rank_seed``) every rank starts from the same seed, so every rank restores it.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def get_rng_state() -> dict:
    """Positions of every generator a training step may draw from."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(python=random.getstate(), torch=torch.get_rng_state(),
                 numpy=dict(kind=kind, keys=keys.tolist(), pos=int(pos),
                            has_gauss=int(has_gauss), cached_gaussian=float(cached)))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state` (CUDA states only when the device count matches)."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state['torch'])
    np_state = state['numpy']
    np.random.set_state((np_state['kind'], np.asarray(np_state['keys'], dtype=np.uint32),
                         np_state['pos'], np_state['has_gauss'], np_state['cached_gaussian']))
    cuda = state.get('cuda')
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
