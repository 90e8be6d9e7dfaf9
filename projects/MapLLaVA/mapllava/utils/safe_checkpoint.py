"""Let mmengine 0.10.7 checkpoints load under ``torch.load(weights_only=True)``.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means
``weights_only=True`` and resuming fails on the few non-tensor objects mmengine pickles into
its checkpoints (``HistoryBuffer`` logs in the message hub, numpy arrays and scalars). We
allow-list exactly those globals instead of unpickling arbitrary objects (the numpy ones are
the allow-list of ``safe_pickle``, which reads info and prediction files).

``HistoryBuffer`` pickles its statistics functions (``HistoryBuffer.min`` ...) as
``getattr(HistoryBuffer, 'min')``; rather than trusting ``builtins.getattr`` in general we
register a restricted stand-in that resolves only those names.
"""
from __future__ import annotations

import pickle

import torch
from mmengine.logging import HistoryBuffer

from .safe_pickle import numpy_globals

_REGISTERED = False


def _history_buffer_getattr(obj: object, name: str) -> object:
    """``getattr`` limited to HistoryBuffer's registered statistics methods."""
    if obj is HistoryBuffer and isinstance(name, str) and (
            name in HistoryBuffer._statistics_methods
            or name in ('min', 'max', 'current', 'mean')):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer statistics '
        'methods are allowed when loading with weights_only=True')


def register_safe_globals() -> None:
    """Allow-list what mmengine checkpoints need (idempotent)."""
    global _REGISTERED
    if _REGISTERED or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    numpy_items = [(obj, name) for name, obj in numpy_globals().items()]  # 1.x and 2.x names
    torch.serialization.add_safe_globals(
        [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')] + numpy_items)
    _REGISTERED = True
