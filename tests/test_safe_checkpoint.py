"""mmengine checkpoints save and resume under torch>=2.6 (weights_only loading)."""
import io
import os
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import projects.MapLLaVA.mapllava  # noqa: F401  (registers the safe globals)
from projects.MapLLaVA.mapllava.utils.safe_checkpoint import _history_buffer_getattr


class _Linear(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x, y, mode='loss'):
        x, y = torch.stack(x), torch.stack(y)
        return dict(loss=((self.fc(x) - y) ** 2).mean())


class _Points(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(x=torch.tensor([float(i), 1.0]), y=torch.tensor([2.0 * i]))


def _runner(work_dir, max_epochs, resume=False):
    return Runner(
        model=_Linear(), work_dir=str(work_dir), resume=resume, randomness=dict(seed=0),
        train_dataloader=dict(dataset=_Points(), batch_size=2,
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=dict(type='CosineAnnealingLR', T_max=16, by_epoch=False),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)))


def test_checkpoint_resume_with_weights_only_default(tmp_path):
    assert torch.__version__ >= '2.6'
    _runner(tmp_path / 'a', max_epochs=1).train()
    ckpt = tmp_path / 'a' / 'epoch_1.pth'
    # loads with the strict unpickler, message hub history included
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert 'message_hub' in state and 'optimizer' in state
    resumed = _runner(tmp_path / 'a', max_epochs=2, resume=True)
    resumed.train()
    assert resumed.iter == 8 and resumed.epoch == 2


def test_arbitrary_objects_still_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'x': os.getcwd}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_restricted_getattr_refuses_other_names():
    with pytest.raises(pickle.UnpicklingError):
        _history_buffer_getattr(os, 'system')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(_getattr_payload()), weights_only=True)


def _getattr_payload() -> bytes:
    """A pickle that calls getattr(HistoryBuffer, '__init__')."""
    from mmengine.logging import HistoryBuffer

    class _Evil:
        def __reduce__(self):
            return getattr, (HistoryBuffer, '__init__')
    buf = io.BytesIO()
    torch.save({'x': _Evil()}, buf)
    return buf.getvalue()


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from projects.MapLLaVA.mapllava.engine.rng_state import get_rng_state, set_rng_state
    np.random.normal()  # a cached gaussian in numpy's state
    path = tmp_path / 'rng.pth'
    torch.save(dict(meta=dict(rng_state=get_rng_state())), path)
    draws = (random.random(), np.random.normal(3), torch.rand(3))
    set_rng_state(torch.load(path, weights_only=True)['meta']['rng_state'])
    again = (random.random(), np.random.normal(3), torch.rand(3))
    assert draws[0] == again[0]
    np.testing.assert_array_equal(draws[1], again[1])
    assert torch.equal(draws[2], again[2])
