"""``GroupLRLoggerHook``: learning rate per named part of the model, and current losses.

mmengine logs only the first param group's lr. With ``paramwise_cfg.custom_keys`` the
optimizer has one group per parameter, so we map groups back to parameter names and record
``train/<group>_lr`` in the message hub each iteration; ``LoggerHook`` prints these and
every vis backend (TensorBoard included) receives them. The names end in ``lr`` because
``LogProcessor`` prints exactly those keys in scientific notation next to ``lr`` (others get
four decimals, which would show 1e-5 as 0.0000).

The losses printed by ``LoggerHook`` are ``LogProcessor``'s running means over its window;
with ``show_current=True`` the hook also asks the log processor for the current value of
``current_keys`` (logged as ``<key>_cur``).
"""
from __future__ import annotations

from typing import Optional, Sequence

from mmdet3d.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper

DEFAULT_LR_GROUPS = dict(bev='bev_encoder', qformer='neck.qformer', queries='bridge.map_queries',
                         decoder='map_head', llm='bridge.llm')
DEFAULT_CURRENT_KEYS = ('loss', 'loss_cls', 'loss_pts', 'loss_dir')


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + '.')


def lr_group_index(model, optimizer, lr_groups: dict) -> dict:
    """``{group name: index of its param group}`` for groups with trainable parameters.

    A group is found through its first trainable parameter whose name starts with the
    prefix (the first group wins if a prefix spans groups with different lrs).
    """
    owner = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g['params']}
    found = {}
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) not in owner:
            continue
        for group, prefix in lr_groups.items():
            if group not in found and _under(name, prefix):
                found[group] = owner[id(param)]
    return {g: found[g] for g in lr_groups if g in found}


@HOOKS.register_module()
class GroupLRLoggerHook(Hook):
    """Record ``<group>_lr`` per iteration and show current loss values.

    Args:
        lr_groups: group name -> parameter-name prefix (whole dotted components, unlike the
            substring match of ``paramwise_cfg.custom_keys``).
        show_current: add ``<key>_cur`` (current value) for ``current_keys`` to the log.
        current_keys: loss names whose current value is shown.
    """

    priority = 'BELOW_NORMAL'

    def __init__(self, lr_groups: Optional[dict] = None, show_current: bool = True,
                 current_keys: Sequence[str] = DEFAULT_CURRENT_KEYS) -> None:
        self.lr_groups = dict(DEFAULT_LR_GROUPS if lr_groups is None else lr_groups)
        self.show_current = show_current
        self.current_keys = tuple(current_keys)
        self._index: dict = {}

    def before_run(self, runner) -> None:
        if not self.show_current:
            return
        custom = runner.log_processor.custom_cfg
        taken = {c.get('log_name', c['data_src']) for c in custom}
        for key in self.current_keys:
            if f'{key}_cur' not in taken:
                custom.append(dict(data_src=key, log_name=f'{key}_cur', method_name='current'))

    def before_train(self, runner) -> None:
        wrapper = runner.optim_wrapper
        if not isinstance(wrapper, OptimWrapper):
            runner.logger.warning('GroupLRLoggerHook: one OptimWrapper expected; '
                                  'per-group lr is not logged')
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._index = lr_group_index(model, wrapper.optimizer, self.lr_groups)
        skipped = sorted(set(self.lr_groups) - set(self._index))
        runner.logger.info(f'GroupLRLoggerHook: logging lr of {sorted(self._index)}'
                           + (f'; no trainable parameters for {skipped}' if skipped else ''))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        groups = runner.optim_wrapper.optimizer.param_groups if self._index else ()
        for name, idx in self._index.items():
            runner.message_hub.update_scalar(f'train/{name}_lr', groups[idx]['lr'])
