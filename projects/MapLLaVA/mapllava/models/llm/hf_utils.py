"""Resolving and reading Hugging Face checkpoints (local folders or hub ids) with clear errors.

Shared by the Q-Former neck (which reads only a slice of a BLIP-2 checkpoint) and the LLM
bridge (which hands the path to ``from_pretrained``).
"""
import json
import os
from collections.abc import Callable

import huggingface_hub.constants
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open
from torch import Tensor
from transformers.utils import cached_file

DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}


def to_torch_dtype(name: str) -> torch.dtype:
    """Map the config spelling (``'bf16'``, ``'fp16'``, ``'fp32'``) to a torch dtype."""
    if name not in DTYPES:
        raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {name!r}')
    return DTYPES[name]


def is_offline() -> bool:
    """Whether the Hugging Face libraries were told not to touch the network."""
    flags = (os.environ.get(k, '').upper() for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'))
    return bool(huggingface_hub.constants.HF_HUB_OFFLINE) or any(
        f in ('1', 'ON', 'YES', 'TRUE') for f in flags)


def check_pretrained_path(path: str, what: str) -> None:
    """Fail early, naming ``path``, when it is neither a local folder nor a valid hub id."""
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise FileNotFoundError(f'{what} {path!r} is a file; expected a Hugging Face model '
                                'folder (config.json + weights) or a hub id')
    try:
        validate_repo_id(path)
    except HFValidationError:
        raise FileNotFoundError(f'{what} {path!r} does not exist: it is not a local folder and '
                                'not a valid Hugging Face hub id') from None


def load_error(path: str, what: str, err: Exception) -> OSError:
    """Wrap a transformers/hub loading error into one that names the path and offline mode."""
    msg = f'could not load {what} from {path!r}: no such local folder, so it was tried as a hub id'
    if is_offline():
        msg += (' while offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set), and it is not in '
                f'the local cache ({huggingface_hub.constants.HF_HUB_CACHE})')
    return OSError(f'{msg}. Original error: {err}')


def resolve_file(path: str, filename: str, what: str, optional: bool = False) -> str | None:
    """Local file for ``filename`` of checkpoint ``path`` (downloaded from the hub if allowed)."""
    try:
        found = cached_file(path, filename, _raise_exceptions_for_missing_entries=not optional)
    except OSError as err:
        found, error = None, err
    else:
        error = FileNotFoundError(f'{filename} not found')
    if found is not None or optional:
        return found
    if os.path.isdir(path):
        raise FileNotFoundError(f'{what} {path!r} has no {filename}') from error
    raise load_error(path, what, error) from error


def read_config(path: str, what: str) -> dict:
    """The checkpoint's ``config.json`` as a dict."""
    with open(resolve_file(path, 'config.json', what)) as f:
        return json.load(f)


def read_tensors(path: str, keep: Callable[[str], bool], what: str) -> dict[str, Tensor]:
    """Read only the tensors whose names pass ``keep`` (and only the shards holding them).

    Handles single-file and sharded checkpoints in safetensors or PyTorch ``.bin`` format, so a
    few hundred MB of Q-Former weights can be taken out of a multi-GB BLIP-2 checkpoint.
    """
    files = None
    for index in ('model.safetensors.index.json', 'pytorch_model.bin.index.json'):
        index_file = resolve_file(path, index, what, optional=True)
        if index_file is not None:
            with open(index_file) as f:
                weight_map = json.load(f)['weight_map']
            shards = sorted({shard for key, shard in weight_map.items() if keep(key)})
            files = [resolve_file(path, shard, what) for shard in shards]
            break
    if files is None:
        for single in ('model.safetensors', 'pytorch_model.bin'):
            found = resolve_file(path, single, what, optional=True)
            if found is not None:
                files = [found]
                break
    if files is None:
        err = FileNotFoundError(f'{what} {path!r} has no model.safetensors / pytorch_model.bin '
                                '(or sharded index)')
        raise err if os.path.isdir(path) else load_error(path, what, err)
    tensors = {}
    for file in files:
        if file.endswith('.safetensors'):
            with safe_open(file, framework='pt') as f:
                tensors.update({k: f.get_tensor(k) for k in f.keys() if keep(k)})
        else:
            state = torch.load(file, map_location='cpu', weights_only=True, mmap=True)
            tensors.update({k: v for k, v in state.items() if keep(k)})
    return tensors
