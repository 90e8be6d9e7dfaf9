"""Sharded checkpoints on disk: what ``FSDP2Strategy`` writes and ``tools/export_checkpoint.py``
reads.

A sharded checkpoint is a folder (named like mmengine's files, ``checkpoint_epoch_N.pth/``):
``torch.distributed.checkpoint`` (DCP) writes each rank's shards of the model
(``state_dict``) and the AdamW state (``optimizer``) in parallel, plus its ``.metadata``; rank 0
adds ``extra_state.pth`` with what is small and not sharded (``meta`` with the random
generators, ``message_hub``, ``param_schedulers``, the optimizer wrapper's extras). DCP
reshards on load, so a run may resume on another number of GPUs.

The folder is written as ``<name>.tmp/`` and renamed into place when complete, so a run
killed while saving leaves the previous checkpoint usable. Single-file checkpoints go through
``<name>.tmp`` and ``os.replace`` the same way, written straight to disk (mmengine builds the
whole file in memory first, twice the RAM at 7B).
"""
from __future__ import annotations

import os
import os.path as osp
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

EXTRA_FILE = 'extra_state.pth'
MODEL_KEY = 'state_dict'


def is_sharded_checkpoint(path: str) -> bool:
    """Whether ``path`` is a folder DCP wrote (it holds ``.metadata``)."""
    return osp.isdir(path) and osp.isfile(osp.join(path, '.metadata'))


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _remove(path: str) -> None:
    if osp.isdir(path) and not osp.islink(path):
        shutil.rmtree(path)
    elif osp.lexists(path):
        os.remove(path)


def _replace(src: str, dst: str) -> None:
    """Put ``src`` (file or folder) at ``dst``; an old ``dst`` is moved aside, then removed."""
    old = None
    if osp.lexists(dst):
        old = dst + '.old'
        _remove(old)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        _remove(old)


def atomic_torch_save(obj: object, path: str) -> None:
    """``torch.save`` to ``path + '.tmp'``, fsync, then rename over ``path``."""
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def save_sharded(tensors: dict, extra: dict, path: str) -> None:
    """Write a sharded checkpoint folder; every rank calls this (DCP's save is collective).

    Args:
        tensors: ``dict(state_dict=..., optimizer=...)`` of DTensors (each rank's shards).
        extra: picklable rest, written by rank 0 to ``extra_state.pth``.
        path: the folder.
    """
    tmp = path + '.tmp'
    if _is_rank0():
        _remove(tmp)
    _barrier()
    dcp.save(tensors, checkpoint_id=tmp, no_dist=not dist.is_initialized())
    if _is_rank0():
        atomic_torch_save(extra, osp.join(tmp, EXTRA_FILE))
        _replace(tmp, path)
    _barrier()


def load_sharded(template: dict, path: str) -> None:
    """Fill ``template`` (same nesting as saved, e.g. ``{'state_dict': ...}``) in place."""
    dcp.load(template, checkpoint_id=path, no_dist=not dist.is_initialized())


def read_extra(path: str) -> dict:
    """The non-sharded part of a sharded checkpoint."""
    extra = osp.join(path, EXTRA_FILE)
    if not osp.isfile(extra):
        raise FileNotFoundError(f'{path}: no {EXTRA_FILE}; not a checkpoint FSDP2Strategy wrote')
    return torch.load(extra, map_location='cpu', weights_only=True)


def _model_entries(path: str) -> dict[str, TensorStorageMetadata]:
    """The model tensors' metadata, by state-dict key (DCP flattens ``state_dict.<key>``)."""
    metadata = FileSystemReader(path).read_metadata()
    paths = metadata.planner_data or {}
    entries = {}
    for flat_key, item in metadata.state_dict_metadata.items():
        obj_path = paths.get(flat_key, tuple(flat_key.split('.', 1)))
        if (len(obj_path) == 2 and obj_path[0] == MODEL_KEY
                and isinstance(item, TensorStorageMetadata)):
            entries[obj_path[1]] = item
    return entries


def model_shapes(path: str) -> dict[str, torch.Size]:
    """``{key: global shape}`` of the model tensors in a sharded checkpoint (metadata only)."""
    return {key: item.size for key, item in _model_entries(path).items()}


def read_model(path: str) -> dict[str, torch.Tensor]:
    """The whole model state dict of a sharded checkpoint, in this process and on CPU.

    Only the model tensors are read (a third of the folder at 7B: no AdamW state).
    """
    state = {key: torch.empty(item.size, dtype=item.properties.dtype)
             for key, item in _model_entries(path).items()}
    dcp.load({MODEL_KEY: state}, checkpoint_id=path, no_dist=True)
    return state


def export_consolidated(path: str, out_file: str) -> dict:
    """Write sharded checkpoint ``path`` as one lean ``.pth`` that ``MapRunner`` and
    ``tools/test.py`` load: ``state_dict`` (what the model saves: trained weights and buffers,
    never the frozen LLM weights it reloads from ``llm_path``), ``meta``, ``message_hub``.

    Returns the checkpoint written.
    """
    if not is_sharded_checkpoint(path):
        raise FileNotFoundError(f'{path} is not a sharded checkpoint folder (no .metadata)')
    extra = read_extra(path)
    checkpoint = dict(meta=extra.get('meta', {}), state_dict=read_model(path))
    if 'message_hub' in extra:
        checkpoint['message_hub'] = extra['message_hub']
    atomic_torch_save(checkpoint, out_file)
    return checkpoint
