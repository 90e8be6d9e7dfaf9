"""``FSDP2Strategy``: mmengine's strategy interface over PyTorch FSDP2 (``fully_shard``).

Stage 3 at 7B does not fit DDP (each GPU would hold the fp32 LLM, its gradients and AdamW
state, docs/distributed.md). mmengine 0.10.7's ``FSDPStrategy`` wraps FSDP1, which needs an
accelerator even to start; FSDP2 shards parameters as DTensors, runs on CPU with gloo too
(so CI tests it) and keeps parameter names, hence ``paramwise_cfg`` learning rates, the
``GroupLRLoggerHook`` groups and state-dict keys, unchanged.

Used through ``FlexibleRunner`` (``MapFlexibleRunner``), launched as any run
(``tools/dist_train.sh``, ``tools/slurm_train.sh``). What it does:

* **Sharding** (distributed launches, one GPU included): one FSDP unit per module whose class
  is in ``layer_cls`` (the LLM's decoder layers), then the root unit for everything else.
  Each GPU holds 1/N of every parameter, gradient and AdamW state; a unit is gathered for
  its forward and backward only. A one-process run (``--launcher none``) does not shard.
* **Mixed precision**: the layers compute in ``mixed_precision.param_dtype`` (bf16), reduce
  gradients in ``reduce_dtype`` (fp32) and keep the sharded fp32 master weights that
  ``LLMBridge(mode='full')`` builds. The root unit keeps its weights' dtype: outside the LLM
  the config's AMP autocast and fp32 islands (deformable attention, geometry) decide.
* ``cpu_offload``: sharded parameters, gradients and AdamW state live in pinned CPU memory
  and the step runs on the CPU (``CPUOffloadPolicy``).
* ``activation_checkpointing``: each layer is wrapped in torch's non-reentrant
  ``checkpoint_wrapper`` before sharding (its activations are recomputed in backward).
* **Checkpoints**: with the optimizer (``checkpoint_epoch_N.pth``) a sharded DCP folder that
  resume continues exactly (model, AdamW, schedulers, message hub, random generators);
  without it (``best_model.pth``, ``final_model.pth``) one consolidated lean file gathered
  on rank 0, the same as ``MapRunner`` writes. Loading checks keys like ``MapRunner``
  (``checkpoint_check`` patterns from the config).
"""
from __future__ import annotations

import re
import time
from typing import Callable, Optional, Sequence, Union

import mmengine
import torch
from mmengine._strategy import DDPStrategy
from mmengine.device import get_device
from mmengine.dist import barrier, is_main_process
from mmengine.model import BaseDataPreprocessor
from mmengine.registry import STRATEGIES
from mmengine.runner.checkpoint import _load_checkpoint
from mmengine.utils import get_git_hash
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from ..models.llm.hf_utils import to_torch_dtype
from .map_runner import check_state_dict
from .rng_state import get_rng_state, set_rng_state
from .runner_conventions import CheckpointResumeError
from .sharded_checkpoint import (
    MODEL_KEY,
    atomic_torch_save,
    is_sharded_checkpoint,
    load_sharded,
    model_shapes,
    read_extra,
    save_sharded,
)

_DEFAULT_REVISE_KEYS = [(r'^module\.', '')]
_MP_KEYS = ('param_dtype', 'reduce_dtype')
_OPTIM_KEY = 'optimizer'


def mixed_precision_policies(
        mixed_precision: Optional[dict]) -> tuple[MixedPrecisionPolicy, MixedPrecisionPolicy]:
    """``(layer policy, root policy)`` from ``dict(param_dtype=..., reduce_dtype=...)``.

    Dtypes are spelt ``'bf16'``, ``'fp16'``, ``'fp32'`` or ``None`` (the weights' own dtype).
    The root policy computes in the weights' dtype and reduces in ``reduce_dtype``.
    """
    cfg = dict(mixed_precision or {})
    unknown = sorted(set(cfg) - set(_MP_KEYS))
    if unknown:
        raise ValueError(f'strategy.mixed_precision: unknown keys {unknown}; '
                         f'allowed: {list(_MP_KEYS)}')
    dtypes = {k: None if cfg.get(k) is None else to_torch_dtype(cfg[k]) for k in _MP_KEYS}
    return (MixedPrecisionPolicy(param_dtype=dtypes['param_dtype'],
                                 reduce_dtype=dtypes['reduce_dtype']),
            MixedPrecisionPolicy(reduce_dtype=dtypes['reduce_dtype']))


@STRATEGIES.register_module()
class FSDP2Strategy(DDPStrategy):
    """Fully sharded data parallel training with FSDP2 (see the module docstring).

    Args:
        layer_cls: class names of the modules that become FSDP units (``'LlamaDecoderLayer'``
            for Vicuna); at least one must exist in the model.
        mixed_precision: ``dict(param_dtype='bf16', reduce_dtype='fp32')`` for the layers;
            ``None`` values keep the weights' dtype.
        cpu_offload: keep sharded parameters, gradients and optimizer state on the CPU.
        activation_checkpointing: recompute each layer's activations in backward. The
            model's own checkpointing of those layers (``LLMBridge.gradient_checkpointing``)
            must then be off.
        reshard_after_forward: free a layer's gathered weights after its forward (and gather
            again in backward); ``False`` trades memory for one all-gather less per layer.
        checkpoint_check: ``dict(allow_missing=[...], allow_unexpected=[...])`` fnmatch
            patterns for loading (``MapFlexibleRunner`` passes the config's).
        **kwargs: ``DDPStrategy``'s (``sync_bn``, and what ``FlexibleRunner`` sets).
    """

    def __init__(self,
                 *,
                 layer_cls: Sequence[str] = ('LlamaDecoderLayer', ),
                 mixed_precision: Optional[dict] = None,
                 cpu_offload: bool = False,
                 activation_checkpointing: bool = False,
                 reshard_after_forward: bool = True,
                 checkpoint_check: Optional[dict] = None,
                 **kwargs) -> None:
        if isinstance(layer_cls, str) or not layer_cls:
            raise ValueError(f'strategy.layer_cls must be a non-empty list of class names, '
                             f'got {layer_cls!r}')
        self.layer_cls = tuple(layer_cls)
        self.layer_mp_policy, self.root_mp_policy = mixed_precision_policies(mixed_precision)
        self.cpu_offload = bool(cpu_offload)
        self.activation_checkpointing = bool(activation_checkpointing)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.checkpoint_check = dict(checkpoint_check or {})
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ wrapping
    def _wrap_model(self, model: nn.Module) -> nn.Module:
        """Shard ``model`` in place (layers bottom-up, then the root); no wrapper object."""
        if not self.distributed:
            # SingleDeviceStrategy's: one process, nothing to shard
            return super(DDPStrategy, self)._wrap_model(model)
        self._check_one_call_per_layer(model)
        model = self.convert_model(model)
        device = get_device()
        for module in model.modules():
            # fully_shard moves tensors, not the preprocessor's own record of its device
            if isinstance(module, BaseDataPreprocessor):
                module.to(device)
        layers = self._layers(model)
        if self.activation_checkpointing:
            layers = [(name, self._checkpointed(model, name, layer)) for name, layer in layers]
        mesh = init_device_mesh(torch.device(device).type, (self.world_size, ))
        # pinned host memory for fast copies needs an accelerator; plain memory on CPU runs
        offload = (CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if self.cpu_offload
                   else OffloadPolicy())
        for _, layer in reversed(layers):  # bottom-up: a unit excludes what is already one
            fully_shard(layer, mesh=mesh, mp_policy=self.layer_mp_policy,
                        offload_policy=offload, reshard_after_forward=self.reshard_after_forward)
        fully_shard(model, mesh=mesh, mp_policy=self.root_mp_policy, offload_policy=offload)
        self.logger.info(f'FSDP2: {len(layers)} {"/".join(self.layer_cls)} units + the root '
                         f'over {self.world_size} ranks, layers {self.layer_mp_policy}, '
                         f'cpu_offload={self.cpu_offload}, '
                         f'activation_checkpointing={self.activation_checkpointing}')
        return model

    @staticmethod
    def _check_one_call_per_layer(model: nn.Module) -> None:
        """FSDP2 frees a layer's gathered weights after each call; gradients that flow from
        one call of a layer into another (the LLM bridge's prompt cache when the LLM trains)
        would then find them gone in backward."""
        for name, module in model.named_modules():
            if getattr(module, 'prompt_cache', False) and getattr(module, 'mode', None) in (
                    'lora', 'full'):
                raise ValueError(
                    f'{name}: the prompt cache runs every LLM layer twice per forward with '
                    f'gradients between the runs, which FSDP2 cannot shard; set '
                    f'model.{name}.prompt_cache=False')

    def _layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        layers = [(name, module) for name, module in model.named_modules()
                  if type(module).__name__ in self.layer_cls]
        if not layers:
            raise ValueError(f'strategy.layer_cls={list(self.layer_cls)}: no module of these '
                             f'classes in {type(model).__name__} (Vicuna / Llama: '
                             "'LlamaDecoderLayer')")
        return layers

    @staticmethod
    def _checkpointed(model: nn.Module, name: str, layer: nn.Module) -> nn.Module:
        if getattr(layer, 'gradient_checkpointing', False):
            raise ValueError(f'{name} already checkpoints itself; with '
                             'strategy.activation_checkpointing=True set '
                             'model.bridge.gradient_checkpointing=False')
        parent_name, _, child = name.rpartition('.')
        wrapped = checkpoint_wrapper(layer)
        model.get_submodule(parent_name).register_module(child, wrapped)
        return wrapped

    # ------------------------------------------------------------------ state dicts
    def model_state_dict(self) -> dict:
        """The whole (unsharded) model state dict on rank 0's CPU; ``{}`` on other ranks.

        Collective. Keys and content are ``model.state_dict()``'s: the frozen LLM weights
        that ``LLMBridge`` reloads from ``llm_path`` are not in it.
        """
        return get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optim_state_dict(self) -> dict:
        """This rank's shards of the optimizer state, keyed by parameter name."""
        return get_optimizer_state_dict(self.model, self.optim_wrapper.optimizer)

    def load_model_state_dict(self, state_dict: dict, *, strict: bool = False,
                              revise_keys: list = _DEFAULT_REVISE_KEYS) -> None:
        """Load a whole (unsharded) state dict; each rank keeps its shard of every tensor.

        Keys are checked first (:func:`check_state_dict` with ``checkpoint_check``), so
        ``strict`` is not needed: a mismatch is always an error.
        """
        for pattern, repl in revise_keys:
            state_dict = {re.sub(pattern, repl, k): v for k, v in state_dict.items()}
        self._check_keys(state_dict, 'the checkpoint')
        local = {}
        for key, target in self.model.state_dict().items():
            if key not in state_dict:
                continue  # allowed missing (checked above): keeps its current value
            value = state_dict[key]
            if isinstance(target, DTensor):
                # every rank holds the whole tensor: each cuts its own shard, no traffic
                value = distribute_tensor(value.to(target.dtype), target.device_mesh,
                                          target.placements, src_data_rank=None)
            local[key] = value
        self.model.load_state_dict(local, strict=False)

    def load_optim_state_dict(self, state_dict: dict) -> None:
        """Load what :meth:`optim_state_dict` returned (this rank's shards)."""
        set_optimizer_state_dict(self.model, self.optim_wrapper.optimizer, state_dict)

    def _check_keys(self, ckpt_state: dict, source: str) -> None:
        allow = self.checkpoint_check
        check_state_dict(self.model.state_dict(), ckpt_state, source=source,
                         allow_missing=allow.get('allow_missing', ()),
                         allow_unexpected=allow.get('allow_unexpected', ()))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str, *, save_optimizer: bool = True,
                        save_param_scheduler: bool = True, extra_ckpt: Optional[dict] = None,
                        callback: Optional[Callable] = None) -> None:
        """With the optimizer: a sharded folder ``filename`` (every rank writes its shards).
        Without: one consolidated lean file written by rank 0. Every rank calls this."""
        if '://' in filename:
            raise ValueError(f'FSDP2Strategy saves to a local or shared file system, '
                             f'got {filename}')
        checkpoint = dict(extra_ckpt or {})
        checkpoint['meta'] = dict(checkpoint.get('meta') or {})
        checkpoint['meta'].update(
            seed=self.seed, time=time.strftime('%Y%m%d_%H%M%S', time.localtime()),
            mmengine=mmengine.__version__ + get_git_hash())
        # the runner passes the state the next step starts from (MapFlexibleRunner)
        checkpoint['meta'].setdefault('rng_state', get_rng_state())
        if save_param_scheduler and hasattr(self, 'param_schedulers'):
            checkpoint['param_schedulers'] = self.scheduler_state_dict()
        sharded = save_optimizer and hasattr(self, 'optim_wrapper')
        if sharded:
            checkpoint[MODEL_KEY] = get_model_state_dict(self.model)
            checkpoint[_OPTIM_KEY] = self.optim_state_dict()
            checkpoint['optim_wrapper'] = self._optim_wrapper_extras()
        else:
            checkpoint[MODEL_KEY] = self.model_state_dict()
        if callback is not None:
            callback(checkpoint)
        if sharded:
            tensors = {k: checkpoint.pop(k) for k in (MODEL_KEY, _OPTIM_KEY)}
            save_sharded(tensors, checkpoint, filename)
            return
        if is_main_process():
            atomic_torch_save(checkpoint, filename)
        barrier()

    def _optim_wrapper_extras(self) -> dict:
        """What ``OptimWrapper.state_dict`` adds to the optimizer's (lr logging, AMP)."""
        wrapper, extras = self.optim_wrapper, {}
        if getattr(wrapper, 'base_param_settings', None) is not None:
            extras['base_param_settings'] = wrapper.base_param_settings
        if hasattr(wrapper, 'loss_scaler'):
            extras['loss_scaler'] = wrapper.loss_scaler.state_dict()
        return extras

    def load_checkpoint(self, filename: str, *, map_location: Union[str, Callable] = 'cpu',
                        strict: bool = False, revise_keys: list = _DEFAULT_REVISE_KEYS,
                        callback: Optional[Callable] = None) -> dict:
        """Load the model weights of a consolidated file or of a sharded folder."""
        self.logger.info(f'Load checkpoint from {filename}')
        if is_sharded_checkpoint(filename):
            checkpoint = read_extra(filename)
            if callback is not None:
                callback(checkpoint)
            self._load_sharded(filename, optimizer=False)
            return checkpoint
        checkpoint = _load_checkpoint(filename, map_location='cpu')
        if callback is not None:
            callback(checkpoint)
        state_dict = checkpoint.pop(MODEL_KEY) if MODEL_KEY in checkpoint else checkpoint
        self.load_model_state_dict(state_dict, strict=strict, revise_keys=revise_keys)
        return checkpoint

    def _load_sharded(self, path: str, optimizer: bool) -> None:
        """Model (and optimizer) shards from a sharded folder, resharded to this run."""
        shapes = model_shapes(path)
        self._check_keys({k: torch.empty(s, device='meta') for k, s in shapes.items()},
                         f'checkpoint {path}')
        model_sd = {k: v for k, v in get_model_state_dict(self.model).items() if k in shapes}
        template = {MODEL_KEY: model_sd}
        if optimizer:
            template[_OPTIM_KEY] = self.optim_state_dict()  # creates the state if empty
        load_sharded(template, path)  # in place: the values are the parameters' shards
        if optimizer:
            self.load_optim_state_dict(template[_OPTIM_KEY])

    def resume(self, filename: str, *, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default',
               callback: Optional[Callable] = None) -> dict:
        """Continue exactly from a sharded folder: weights, AdamW, schedulers, generators."""
        self.logger.info(f'Resume checkpoint from {filename}')
        if not is_sharded_checkpoint(filename):
            raise CheckpointResumeError(
                f'cannot resume from {filename}: FSDP2Strategy resumes from the sharded '
                'checkpoint folders it writes (checkpoint_epoch_N.pth/, with the optimizer '
                f'state); use load_from={filename} to start a new run from its weights')
        checkpoint = read_extra(filename)
        if callback is not None:
            callback(checkpoint)
        resume_optimizer = resume_optimizer and hasattr(self, 'optim_wrapper')
        self._load_sharded(filename, optimizer=resume_optimizer)
        if resume_optimizer:
            extras = checkpoint.get('optim_wrapper', {})
            if 'base_param_settings' in extras:
                self.optim_wrapper.base_param_settings = extras['base_param_settings']
            if 'loss_scaler' in extras and hasattr(self.optim_wrapper, 'loss_scaler'):
                self.optim_wrapper.loss_scaler.load_state_dict(extras['loss_scaler'])
        if resume_param_scheduler and hasattr(self, 'param_schedulers'):
            self.load_scheduler_state_dict(checkpoint['param_schedulers'])
        meta = checkpoint['meta']
        resumed_seed, current_seed = meta.get('seed'), self._randomness.get('seed')
        if resumed_seed is not None and resumed_seed != current_seed:
            if current_seed is not None:
                self.logger.warning(f'The random seed in the checkpoint ({resumed_seed}) '
                                    f'differs from randomness.seed ({current_seed})')
            self._randomness.update(seed=resumed_seed)
            self._set_randomness(**self._randomness)
        if hasattr(self, 'optim_wrapper') and getattr(
                self.optim_wrapper, '_accumulative_counts', 1) > 1:
            self.optim_wrapper.initialize_count_status(self.model, meta['iter'],
                                                       self.dispatch_kwargs['max_iters'])
        if meta.get('rng_state') is not None:
            set_rng_state(meta['rng_state'])
        return checkpoint
