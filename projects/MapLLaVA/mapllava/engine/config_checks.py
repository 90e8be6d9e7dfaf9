"""Checks of user input that must fail before the first training step, with clear messages.

Used by ``tools/train.py``, ``tools/test.py`` and ``tools/preflight.py``.

``--cfg-options`` keys: mmengine's ``merge_from_dict`` silently creates any key it is given,
so a typo (``model.head.num_querys=50``) trains the default model. Here every dotted key must
already exist in the config, component by component (list indices included), except

* keys under :data:`OPEN_CONFIG_PATHS`, runtime dicts whose omitted entries mean "use the
  default" (``env_cfg``, ``randomness``, ``optim_wrapper`` ...) and may gain new keys;
* top-level names that ``Runner`` or our tools read (``work_dir``, ``load_from``,
  ``model_wrapper_cfg``, ``runner_type``, ``checkpoint_check`` ...);
* keys written with a leading ``+`` (``+model.head.new_arg=1``), the explicit way to add a
  key anywhere; the ``+`` is stripped before merging.

Top-level names that only the config file itself reads (``data_root``, ``max_epochs``) are
refused as well: mmengine has already copied their values where they are used, so changing
them would silently do nothing; the error lists those places.

Keys of the runtime dicts whose consumer is known (``train_cfg`` -> its loop class,
``default_hooks.<name>`` -> the hook's ``__init__``, ``env_cfg`` -> ``Runner.setup_env`` ...,
see :mod:`.config_keys`) must be keys that consumer reads, with or without ``+``, in the
overrides and (:func:`check_config_keys`) in the config file itself.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import os.path as osp
from typing import Any, Iterator

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from mmengine.config import Config
from mmengine.runner import FlexibleRunner, Runner

from .config_keys import consumer_keys, unread_keys

OPEN_CONFIG_PATHS = (
    'env_cfg', 'randomness', 'optim_wrapper', 'optim_wrapper.paramwise_cfg',
    'optim_wrapper.paramwise_cfg.custom_keys', 'default_hooks', 'auto_scale_lr',
    'train_cfg', 'val_cfg', 'test_cfg', 'log_processor', 'visualizer', 'checkpoint_check',
    'preflight')
# read by the runner or our tools although not ``Runner.__init__`` arguments
_EXTRA_TOP_LEVEL = ('runner_type', 'checkpoint_check', 'preflight', 'custom_imports',
                    'model_wrapper_cfg', 'find_unused_parameters', 'sync_bn', 'compile')
# keys naming Hugging Face checkpoints: anywhere in the model, or only inside dicts of a type
PRETRAINED_KEYS = {'llm_path': None, 'tokenizer_path': None, 'pretrained': 'QFormerNeck'}


class ConfigCheckError(ValueError):
    """A user-facing problem with the config, its overrides or the files it points to."""


def _top_level_names() -> set:
    # FlexibleRunner (runner_type='MapFlexibleRunner') also reads ``strategy``
    args = (set(inspect.signature(Runner.__init__).parameters)
            | set(inspect.signature(FlexibleRunner.__init__).parameters))
    return args - {'self'} | set(_EXTRA_TOP_LEVEL)


def _unknown_reason(cfg: Any, parts: list) -> str | None:
    """Why ``parts`` is not a path into ``cfg`` (None when it is, or may be created)."""
    node = cfg
    for i, part in enumerate(parts):
        here = '.'.join(parts[:i]) or '<top level>'
        if isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                return f'{here} is a list of {len(node)} items; {part!r} is not an index in it'
            node = node[int(part)]
        elif isinstance(node, dict):
            if part in node:
                node = node[part]
                continue
            if (i == 0 and part in _top_level_names()) or '.'.join(parts[:i]) in \
                    OPEN_CONFIG_PATHS or consumer_keys('.'.join(parts[:i]), node):
                return None  # a dict with a known consumer is checked after the merge
            close = difflib.get_close_matches(part, [str(k) for k in node], n=3)
            hint = f' (did you mean {", ".join(close)}?)' if close else ''
            return f'{here} has no key {part!r}{hint}'
        else:
            return f'{here} is a {type(node).__name__}, not a dict or list'
    return None


def _paths_with_value(node: Any, value: Any, where: str = '') -> Iterator[str]:
    if isinstance(node, dict):
        for key, sub in node.items():
            yield from _paths_with_value(sub, value, f'{where}.{key}' if where else str(key))
    elif isinstance(node, (list, tuple)):
        for i, sub in enumerate(node):
            yield from _paths_with_value(sub, value, f'{where}.{i}')
    if where.count('.') and node == value:
        yield where


def _variable_reason(tree: dict, top: str) -> str | None:
    """A top-level name that only the config file reads (``data_root``, ``max_epochs``):
    overriding it after parsing changes nothing, so say where its value ended up."""
    if top not in tree or top in _top_level_names():
        return None
    used = list(_paths_with_value(tree, tree[top]))
    where = f'; the same value appears at {", ".join(used[:6])}' if used else ''
    return (f'{top!r} is a variable of the config file: overriding it changes nothing once '
            f'the file is read{where}. Override those keys instead')


def validate_cfg_options(cfg: Any, options: dict | None) -> dict:
    """Check ``--cfg-options`` against ``cfg``; return them with ``+`` markers stripped."""
    if not options:
        return {}
    tree = cfg.to_dict() if isinstance(cfg, Config) else cfg
    checked, mergeable, errors = {}, {}, []
    for key, value in options.items():
        if key.startswith('+'):
            checked[key[1:]] = mergeable[key[1:]] = value
            continue
        reason = _variable_reason(tree, key.split('.')[0]) or _unknown_reason(
            tree, key.split('.'))
        if reason:
            errors.append(f'  {key}: {reason}')
        else:
            mergeable[key] = value
        checked[key] = value
    unread = [f'  {key}: {reason}' for key, reason in _unread_override_keys(tree, mergeable)]
    if errors or unread:
        raise ConfigCheckError(
            'bad key(s) in --cfg-options:\n' + '\n'.join(errors + unread)
            + ('\n  (prefix a key with + to add a key the config does not have)' if errors
               else ''))
    return checked


def _unread_override_keys(tree: dict, options: dict) -> list:
    """Keys the overrides put where their consumer does not read them (judged on the merged
    config: an override may change a dict's ``type``)."""
    merged = Config(copy.deepcopy(tree))
    merged.merge_from_dict(options)
    return [(key, reason) for key, reason in unread_keys(merged.to_dict())
            if any(key == opt or key.startswith(opt + '.') for opt in options)]


def check_config_keys(cfg: Any, source: str) -> None:
    """Raise if a runtime dict of ``cfg`` holds a key its consumer does not read (a typo in
    the config file, or in an override that left the dict's other keys unread)."""
    tree = cfg.to_dict() if isinstance(cfg, Config) else cfg
    problems = [f'  {key}: {reason}' for key, reason in unread_keys(tree)]
    if problems:
        raise ConfigCheckError(f'key(s) nothing reads in {source}:\n' + '\n'.join(problems))


def _leaf_datasets(cfg: Any) -> Iterator[Any]:
    """Datasets inside wrappers (RepeatDataset, CBGSDataset, ConcatDataset)."""
    if not isinstance(cfg, dict):
        return
    if 'dataset' in cfg:
        yield from _leaf_datasets(cfg['dataset'])
    elif 'datasets' in cfg:
        for sub in cfg['datasets']:
            yield from _leaf_datasets(sub)
    else:
        yield cfg


def ann_files(cfg: Any, splits: tuple = ('train', 'val', 'test')) -> list:
    """``(where, data_root, path)`` of every ``ann_file`` of the given dataloaders."""
    found = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not isinstance(loader, dict):
            continue
        for ds in _leaf_datasets(loader.get('dataset')):
            ann = ds.get('ann_file')
            if not ann:
                continue
            root = ds.get('data_root') or ''
            path = ann if osp.isabs(ann) or not root else osp.join(root, ann)
            found.append((f'{split}_dataloader.dataset.ann_file', root, path))
    return found


def check_ann_files(cfg: Any, splits: tuple) -> None:
    """Raise if a dataloader's ``data_root`` or ``ann_file`` is missing on disk."""
    problems = []
    for where, root, path in ann_files(cfg, splits):
        if root and not osp.isdir(root):
            problems.append(f'  {where}: data_root {root} does not exist')
        elif not osp.isfile(path):
            problems.append(f'  {where}: info file {path} does not exist')
    if problems:
        raise ConfigCheckError(
            'dataset files missing:\n' + '\n'.join(problems)
            + '\n  (create the infos with tools/create_data.py, or fix data_root/ann_file)')


def _is_pretrained_ref(parent: dict, key: Any, value: Any) -> bool:
    if key not in PRETRAINED_KEYS or not isinstance(value, str) or not value:
        return False
    owner = PRETRAINED_KEYS[key]
    return owner is None or str(parent.get('type', '')).endswith(owner)


def pretrained_refs(cfg: Any, where: str = 'model') -> list:
    """``(config path, value)`` of every LLM / BLIP-2 / tokenizer reference in ``cfg``."""
    refs = []
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            sub = f'{where}.{key}'
            if _is_pretrained_ref(cfg, key, value):
                refs.append((sub, value))
            else:
                refs += pretrained_refs(value, sub)
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            refs += pretrained_refs(value, f'{where}.{i}')
    return refs


def resolve_pretrained(ref: str, require_cached: bool = True) -> tuple:
    """``(ok, detail)`` for a Hugging Face reference, without touching the network.

    A local folder needs a ``config.json``; a hub id must be in the local HF cache when
    ``require_cached`` (preflight) or when the HF libraries are set offline, else it may be
    downloaded at build time.
    """
    if osp.isdir(ref):
        ok = osp.isfile(osp.join(ref, 'config.json'))
        return ok, f'local folder {ref}' + ('' if ok else ' has no config.json')
    from ..models.llm.hf_utils import is_offline  # lazy: imports every model module
    if osp.exists(ref):
        return False, f'{ref} is a file; expected a model folder (config.json) or a hub id'
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False, f'{ref} does not exist (neither a model folder nor a hub id)'
    if isinstance(try_to_load_from_cache(ref, 'config.json'), str):
        return True, f'hub id {ref} found in the local HF cache'
    if not require_cached and not is_offline():
        return True, f'hub id {ref} not cached: downloaded when the model is built'
    return False, (f'{ref} is not a local folder and not in the local HF cache '
                   '(offline: download it first, or point the config at a folder)')


def check_pretrained(cfg: Any) -> None:
    """Raise if an LLM / BLIP-2 reference in ``cfg.model`` cannot be used to build the model
    (a missing folder, an invalid hub id, or an uncached hub id while offline)."""
    problems = [f'  {where}: {detail}' for where, ref in pretrained_refs(cfg.get('model', {}))
                for ok, detail in [resolve_pretrained(ref, require_cached=False)] if not ok]
    if problems:
        raise ConfigCheckError('pretrained weights not found:\n' + '\n'.join(problems))
