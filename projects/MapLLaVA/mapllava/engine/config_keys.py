"""The keys that the consumers of the config's runtime dicts accept.

mmengine hands ``train_cfg`` to a loop class, ``default_hooks.<name>`` to a hook class,
``env_cfg`` to ``Runner.setup_env`` ... Keys the consumer does not read are either ignored
(``env_cfg.cudnn_benchmrk=True`` trains without cuDNN autotuning, exit status 0) or fail when
the consumer is built, well after start-up (``train_cfg.max_epoch`` is a ``TypeError`` in
``runner.train()``). :func:`consumer_keys` says what the consumer of one dict takes: the
``__init__`` arguments of the class its ``type`` names, or the keys a function reads.
:func:`unread_keys` lists the keys of a whole config that nothing reads.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Iterator

from mmengine.hooks import CheckpointHook
from mmengine.runner import (
    EpochBasedTrainLoop,
    IterBasedTrainLoop,
    LogProcessor,
    Runner,
    TestLoop,
    ValLoop,
)
from mmengine.utils.dl_utils import set_multi_processing

# dicts read key by key by a function, not passed to a signature
FIXED_KEYS = {
    'env_cfg': ('Runner.setup_env',
                ('cudnn_benchmark', 'mp_cfg', 'dist_cfg', 'resource_limit')),
    'auto_scale_lr': ('Runner.scale_lr', ('enable', 'base_batch_size')),
    'checkpoint_check': ('MapRunner.load_checkpoint', ('allow_missing', 'allow_unexpected')),
    'preflight': ('tools/preflight.py',
                  ('requires_gpu', 'gpu_mem_gb', 'gpu_mem_gb_per_sample', 'min_free_disk_gb')),
}
# ``**kwargs`` that a signature cannot follow but that take no further keys: CheckpointHook
# passes its own to ``runner.save_checkpoint``, which already gets every argument it takes
_CLOSED_KWARGS = (CheckpointHook,)
# passed to the loops by the runner itself (``default_args``), not config keys
_RUNNER_GIVEN = frozenset(('self', 'runner', 'dataloader', 'evaluator'))
# read from every hook dict by ``Runner.register_hook``
_HOOK_EXTRA = frozenset(('type', 'priority'))


def _call_args(func: Any) -> set:
    params = inspect.signature(func).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def init_args(cls: type) -> frozenset | None:
    """Keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the MRO; None when
    ``**kwargs`` leave the class hierarchy (``EMAHook`` passes them to its EMA model)."""
    inits = [k for k in cls.__mro__ if '__init__' in vars(k)]
    names: set = set()
    for klass, parent in zip(inits, inits[1:]):
        params = inspect.signature(klass.__init__).parameters.values()
        names |= _call_args(klass.__init__)
        if klass in _CLOSED_KWARGS or not any(p.kind is p.VAR_KEYWORD for p in params):
            break
        if parent is object:  # object takes no arguments: the kwargs go elsewhere
            return None
    return frozenset(names - {'self'})


def _resolve(type_: Any, registry_name: str) -> type | None:
    if inspect.isclass(type_):
        return type_
    if not isinstance(type_, str):
        return None
    from mmdet3d import registry
    return getattr(registry, registry_name).get(type_)


def _class_keys(cls: type | None, extra: frozenset) -> tuple | None:
    if cls is None:
        return None  # not registered: preflight's registry check names it
    args = init_args(cls)
    return None if args is None else (cls.__name__, (args | extra) - _RUNNER_GIVEN)


def consumer_keys(path: str, node: Any) -> tuple | None:
    """``(consumer, accepted keys)`` for the config dict ``node`` found at ``path``; None when
    its consumer is unknown here or takes any key."""
    if not isinstance(node, dict):
        return None
    if path in FIXED_KEYS:
        consumer, keys = FIXED_KEYS[path]
        return consumer, frozenset(keys)
    if path == 'env_cfg.mp_cfg':
        return 'set_multi_processing', frozenset(_call_args(set_multi_processing)
                                                 - {'distributed'})
    if path == 'randomness':
        return 'Runner.set_randomness', frozenset(_call_args(Runner.set_randomness) - {'self'})
    if path in ('train_cfg', 'val_cfg', 'test_cfg', 'log_processor'):
        if 'type' in node:
            registry = 'LOG_PROCESSORS' if path == 'log_processor' else 'LOOPS'
            return _class_keys(_resolve(node['type'], registry), frozenset({'type'}))
        if path == 'train_cfg':  # mmengine's choice when no type is given
            loop = EpochBasedTrainLoop if node.get('by_epoch', True) else IterBasedTrainLoop
            return _class_keys(loop, frozenset({'by_epoch'}))
        default = dict(val_cfg=ValLoop, test_cfg=TestLoop, log_processor=LogProcessor)[path]
        return _class_keys(default, frozenset())
    parts = path.split('.')
    if len(parts) == 2 and parts[0] in ('default_hooks', 'custom_hooks') and 'type' in node:
        return _class_keys(_resolve(node['type'], 'HOOKS'), _HOOK_EXTRA)
    return None


def _checked_dicts(tree: dict) -> Iterator[tuple]:
    for path in (*FIXED_KEYS, 'env_cfg.mp_cfg', 'randomness', 'train_cfg', 'val_cfg',
                 'test_cfg', 'log_processor'):
        node = tree
        for part in path.split('.'):
            node = node.get(part) if isinstance(node, dict) else None
        yield path, node
    hooks = tree.get('default_hooks')
    for name, hook in (hooks.items() if isinstance(hooks, dict) else ()):
        yield f'default_hooks.{name}', hook
    for i, hook in enumerate(tree.get('custom_hooks') or ()):
        yield f'custom_hooks.{i}', hook


def _unread_key_reason(consumer: str, keys: frozenset, key: str) -> str:
    """``'<key>' is not read by <consumer> (did you mean ...?)``."""
    close = difflib.get_close_matches(key, sorted(keys), n=3)
    hint = (f'did you mean {", ".join(close)}?' if close
            else f'it reads {", ".join(sorted(keys)) or "no keys"}')
    return f'{key!r} is not read by {consumer} ({hint})'


def unread_keys(tree: dict) -> list:
    """``(dotted key, reason)`` for every key of a known runtime dict its consumer ignores."""
    found = []
    for path, node in _checked_dicts(tree):
        known = consumer_keys(path, node)
        if known is None:
            continue
        consumer, keys = known
        found += [(f'{path}.{key}', _unread_key_reason(consumer, keys, str(key)))
                  for key in node if key not in keys]
    return found
