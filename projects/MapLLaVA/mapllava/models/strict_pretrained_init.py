"""``StrictPretrained``: mmengine's ``Pretrained`` initializer that refuses missing weights.

mmengine's ``PretrainedInit`` always loads with ``strict=False`` and only logs what did not
match, so a checkpoint with other key names (another prefix, another architecture) leaves the
backbone at random init without failing. Plain ``strict=True`` is no fix either: torchvision's
ResNet files carry the classifier (``fc.*``) that a detection backbone lacks.
"""
import re
from collections import OrderedDict

from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS
from mmengine.runner.checkpoint import _load_checkpoint, load_state_dict
from torch import nn

from .llm.hf_utils import PretrainedWeightsError, check_state_fits, preview_keys

# Filled in by BatchNorm when absent (torchvision's files predate it); mmengine ignores it too.
OPTIONAL_SUFFIXES = ('num_batches_tracked',)


def _with_prefix(state: dict, prefix: str) -> OrderedDict:
    """The entries under ``prefix`` with it stripped (BatchNorm version metadata kept)."""
    out = OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
    metadata = getattr(state, '_metadata', None)
    if metadata is not None:
        out._metadata = OrderedDict(((k + '.')[len(prefix):-1], v) for k, v in metadata.items()
                                    if (k + '.').startswith(prefix))
    return out


@WEIGHT_INITIALIZERS.register_module(name='StrictPretrained')
class StrictPretrainedInit(PretrainedInit):
    """Like ``type='Pretrained'``, but every weight of the module must be in the checkpoint.

    Missing keys or shape mismatches raise ``PretrainedWeightsError`` naming the checkpoint and
    the first keys; unexpected keys (e.g. torchvision's ``fc.*``) are tolerated and logged.
    Same arguments as ``Pretrained``: ``checkpoint`` (file, URL, ``torchvision://``,
    ``open-mmlab://``), ``prefix`` (take the sub-module under it, e.g. ``'backbone.'``),
    ``map_location``.

    Note: mmengine's ``BaseModule.init_weights`` applies ``type='Pretrained'`` after the
    children's own ``init_weights`` but this type in list order before them, so use it on
    modules whose children carry no ``init_cfg`` of their own (true for ``mmdet.ResNet`` given
    an explicit ``init_cfg``).
    """

    def __call__(self, module: nn.Module) -> None:
        state = self._read_state_dict()
        expected = {k: v for k, v in module.state_dict().items()
                    if not k.endswith(OPTIONAL_SUFFIXES)}
        where = f'prefix {self.prefix!r} of ' if self.prefix else ''
        hint = (f'Is it a {type(module).__name__} checkpoint? For a sub-module of a bigger '
                "model set prefix (e.g. 'backbone.').")
        unexpected = check_state_fits(expected, state, self.checkpoint, f'{where}checkpoint',
                                      allow_unexpected=True, hint=hint)
        load_state_dict(module, state, strict=False, logger='current')
        print_log(f'StrictPretrained: loaded {len(expected)} tensors into '
                  f'{type(module).__name__} from {where}{self.checkpoint}; ignored '
                  f'{len(unexpected)} unexpected key(s): {preview_keys(unexpected)}',
                  logger='current')
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _read_state_dict(self) -> OrderedDict:
        """The checkpoint's state dict through mmengine's loaders, ``module.`` and prefix off."""
        checkpoint = _load_checkpoint(self.checkpoint, map_location=self.map_location,
                                      logger='current')
        if not isinstance(checkpoint, dict):
            raise PretrainedWeightsError(f'checkpoint {self.checkpoint!r} holds a '
                                         f'{type(checkpoint).__name__}, not a state dict')
        state = checkpoint.get('state_dict', checkpoint)
        metadata = getattr(state, '_metadata', None)
        state = OrderedDict((re.sub(r'^module\.', '', k), v) for k, v in state.items())
        if metadata is not None:
            state._metadata = metadata
        if not self.prefix:
            return state
        prefix = self.prefix if self.prefix.endswith('.') else self.prefix + '.'
        selected = _with_prefix(state, prefix)
        if not selected:
            roots = sorted({k.split('.', 1)[0] + '.' for k in state})
            raise PretrainedWeightsError(
                f'checkpoint {self.checkpoint!r} has no key under prefix {prefix!r}; its keys '
                f'start with: {preview_keys(roots)}')
        return selected
