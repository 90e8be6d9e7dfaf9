"""The prompt's keys and values as a transformers ``Cache`` the scene tokens attend to.

The LLM bridge runs ``[prompt, scene, map queries]``. The prompt is the same for every sample,
so its keys and values are computed once (batch 1) and the rest of the sequence is fed as
``inputs_embeds`` with ``past_key_values`` holding them.

Neither cache here grows, which is what makes them safe under activation checkpointing: a
decoder layer that is recomputed in the backward calls ``update`` a second time with the same
states, and gets the same result. transformers drops ``past_key_values`` in a checkpointed
layer unless the layer says it only reads the cache (``_can_checkpoint_with_cache``), so
:func:`allow_checkpointing_with_prompt_cache` sets that on the LLM's layers.
"""
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

PromptStates = tuple[tuple[Tensor, Tensor], ...]


class _RecordingLayer(DynamicLayer):
    """Keeps the states of the last ``update`` (the prompt's) instead of appending them."""

    def update(self, key_states: Tensor, value_states: Tensor, *args,
               **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _PrefixLayer(DynamicLayer):
    """A fixed prefix: ``update`` returns prefix + new states and stores nothing."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states: Tensor, value_states: Tensor, *args,
               **kwargs) -> tuple[Tensor, Tensor]:
        return (torch.cat([self.keys, key_states], dim=-2),
                torch.cat([self.values, value_states], dim=-2))


def recording_cache(num_layers: int) -> Cache:
    """An empty cache to pass while running the prompt; read it with :func:`prompt_states`."""
    return Cache(layers=[_RecordingLayer() for _ in range(num_layers)])


def prompt_states(cache: Cache) -> PromptStates:
    """Per layer ``(keys, values)``, each ``(1, kv_heads, prompt_len, head_dim)``."""
    return tuple((layer.keys, layer.values) for layer in cache.layers)


def prefix_cache(states: Sequence[tuple[Tensor, Tensor]], batch: int) -> Cache:
    """A read-only cache of the prompt states for ``batch`` samples.

    The batch-1 states are expanded (views), so in ``lora`` / ``full`` mode the gradient of
    every sample flows back into the one prompt pass.
    """
    return Cache(layers=[_PrefixLayer(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                         for k, v in states])


def allow_checkpointing_with_prompt_cache(model: nn.Module) -> None:
    """Keep ``past_key_values`` in checkpointed layers (see the module docstring).

    Only valid because the bridge passes these non-growing caches and nothing else.
    """
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True
