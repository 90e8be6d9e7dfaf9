"""Resolving and reading Hugging Face checkpoints (local folders or hub ids) with clear errors.

Shared by the Q-Former neck (which reads only a slice of a BLIP-2 checkpoint) and the LLM
bridge (which hands the path to ``from_pretrained``). The key checks (``check_state_fits``,
``check_loading_info``) are also used by the ``StrictPretrained`` initializer: a checkpoint that
lacks weights the model needs must fail loudly instead of leaving them at random init.
"""
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping

import huggingface_hub.constants
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from mmengine.logging import print_log
from safetensors import safe_open
from torch import Tensor
from transformers.utils import cached_file

MAX_KEYS_SHOWN = 10
DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}


def to_torch_dtype(name: str) -> torch.dtype:
    """Map the config spelling (``'bf16'``, ``'fp16'``, ``'fp32'``) to a torch dtype."""
    if name not in DTYPES:
        raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {name!r}')
    return DTYPES[name]


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute ``model``'s (a ``PreTrainedModel``) layers in backward, non-reentrant.

    transformers >= 5.2x names it ``activation_checkpointing_enable``; older 5.x only has
    ``gradient_checkpointing_enable``.
    """
    kwargs = {'use_reentrant': False}
    if hasattr(model, 'activation_checkpointing_enable'):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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


WEIGHT_INDEXES = ('model.safetensors.index.json', 'pytorch_model.bin.index.json')
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def _weight_map(path: str, what: str) -> dict[str, str] | None:
    """Tensor name → shard file of a sharded checkpoint; ``None`` when it is a single file."""
    for index in WEIGHT_INDEXES:
        index_file = resolve_file(path, index, what, optional=True)
        if index_file is not None:
            with open(index_file) as f:
                return json.load(f)['weight_map']
    return None


def _single_weight_file(path: str, what: str) -> str:
    """The one weight file of an unsharded checkpoint (safetensors preferred)."""
    for single in WEIGHT_FILES:
        found = resolve_file(path, single, what, optional=True)
        if found is not None:
            return found
    err = FileNotFoundError(f'{what} {path!r} has no model.safetensors / pytorch_model.bin '
                            '(or sharded index)')
    raise err if os.path.isdir(path) else load_error(path, what, err)


def _read_file(file: str, keep: Callable[[str], bool]) -> dict[str, Tensor]:
    if file.endswith('.safetensors'):
        with safe_open(file, framework='pt') as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    state = torch.load(file, map_location='cpu', weights_only=True, mmap=True)
    return {k: v for k, v in state.items() if keep(k)}


def read_tensors(path: str, keep: Callable[[str], bool], what: str) -> dict[str, Tensor]:
    """Read only the tensors whose names pass ``keep`` (and only the shards holding them).

    Handles single-file and sharded checkpoints in safetensors or PyTorch ``.bin`` format, so a
    few hundred MB of Q-Former weights can be taken out of a multi-GB BLIP-2 checkpoint.
    """
    weight_map = _weight_map(path, what)
    if weight_map is None:
        files = [_single_weight_file(path, what)]
    else:
        shards = sorted({shard for key, shard in weight_map.items() if keep(key)})
        files = [resolve_file(path, shard, what) for shard in shards]
    tensors = {}
    for file in files:
        tensors.update(_read_file(file, keep))
    return tensors


def list_tensor_names(path: str, what: str) -> list[str]:
    """Every tensor name of the checkpoint, read from the index or file header (no shard load).

    Used to tell which layout a checkpoint that does not fit has.
    """
    weight_map = _weight_map(path, what)
    if weight_map is not None:
        return sorted(weight_map)
    file = _single_weight_file(path, what)
    if file.endswith('.safetensors'):
        with safe_open(file, framework='pt') as f:
            return sorted(f.keys())
    return sorted(torch.load(file, map_location='cpu', weights_only=True, mmap=True))


class PretrainedWeightsError(ValueError):
    """A checkpoint lacks (or misshapes) weights the model needs.

    Raised instead of a warning because the weights would silently keep their random init.
    """


def preview_keys(keys: Iterable[str], limit: int = MAX_KEYS_SHOWN) -> str:
    """The first ``limit`` keys (sorted) and how many more, short enough for an error message."""
    keys = sorted(keys)
    more = f', ... (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _report(source: str, what: str, problems: list[str], hint: str) -> PretrainedWeightsError:
    msg = f'{what} {source!r} does not fit the model: ' + '; '.join(problems)
    return PretrainedWeightsError(msg + (f'. {hint}' if hint else ''))


def check_state_fits(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], source: str,
                     what: str, allow_unexpected: bool = False, hint: str = '') -> list[str]:
    """Raise unless ``found`` holds every key of ``expected`` with the same shape.

    Keys of ``found`` that the model lacks are refused too unless ``allow_unexpected``; they
    are returned (sorted) so the caller can log them. ``source`` (the checkpoint path) and
    ``hint`` (e.g. which layout the checkpoint looks like) go into the message.
    """
    missing = [k for k in expected if k not in found]
    mismatched = [f'{k} {tuple(found[k].shape)} in the checkpoint vs {tuple(v.shape)} in the '
                  'model' for k, v in expected.items()
                  if k in found and tuple(found[k].shape) != tuple(v.shape)]
    unexpected = sorted(k for k in found if k not in expected)
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing key(s): {preview_keys(missing)}')
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatch(es): {preview_keys(mismatched)}')
    if unexpected and not allow_unexpected:
        problems.append(f'{len(unexpected)} unexpected key(s): {preview_keys(unexpected)}')
    if problems:
        raise _report(source, what, problems, hint)
    return unexpected


def _describe_mismatch(entry) -> str:
    """transformers reports a mismatch as ``(key, checkpoint shape, model shape)``."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        key, ckpt, model = entry
        return f'{key} {tuple(ckpt)} in the checkpoint vs {tuple(model)} in the model'
    return str(entry)


def check_loading_info(info: Mapping, path: str, what: str) -> None:
    """Raise when ``from_pretrained(..., output_loading_info=True)`` left weights random.

    transformers only warns about missing or (with ``ignore_mismatched_sizes``) misshaped
    weights and initialises them randomly. Unexpected keys are only logged: real checkpoints
    carry extras such as old ``rotary_emb.inv_freq`` buffers.
    """
    missing = list(info.get('missing_keys') or ())
    mismatched = [_describe_mismatch(m) for m in info.get('mismatched_keys') or ()]
    errors = [str(e) for e in info.get('error_msgs') or ()]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing key(s): {preview_keys(missing)}')
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatch(es): {preview_keys(mismatched)}')
    if errors:
        problems.append('errors: ' + ' | '.join(errors[:3]))
    if problems:
        raise _report(path, what, problems, 'transformers would have initialised these '
                      'weights randomly; is it the checkpoint of the configured architecture?')
    unexpected = list(info.get('unexpected_keys') or ())
    if unexpected:
        print_log(f'{what} {path!r}: {len(unexpected)} unexpected key(s) ignored: '
                  f'{preview_keys(unexpected)}', logger='current', level=logging.WARNING)
