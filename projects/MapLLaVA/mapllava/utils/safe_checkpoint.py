"""Let mmengine 0.10.7 checkpoints load under ``torch.load(weights_only=True)``.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means
``weights_only=True`` and resuming fails on the few non-tensor objects mmengine pickles into
its checkpoints (``HistoryBuffer`` logs in the message hub, numpy arrays and scalars). We
allow-list exactly those globals instead of unpickling arbitrary objects.

``HistoryBuffer`` pickles its statistics functions (``HistoryBuffer.min`` ...) as
``getattr(HistoryBuffer, 'min')``; rather than trusting ``builtins.getattr`` in general we
register a restricted stand-in that resolves only those names.
"""
from __future__ import annotations

import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

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


def _numpy_globals() -> list:
    """numpy objects mmengine checkpoints contain, under numpy 1.x and 2.x names."""
    items: list = [np.ndarray, np.dtype]
    for mod_name in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        try:
            mod = __import__(mod_name, fromlist=['_reconstruct', 'scalar'])
        except ImportError:
            continue
        items += [(mod._reconstruct, f'{mod_name}._reconstruct'),
                  (mod.scalar, f'{mod_name}.scalar')]
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25 pickles dtypes by class
    if dtypes is not None:
        items += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return items


def register_safe_globals() -> None:
    """Allow-list what mmengine checkpoints need (idempotent)."""
    global _REGISTERED
    if _REGISTERED or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(
        [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')] + _numpy_globals())
    _REGISTERED = True
