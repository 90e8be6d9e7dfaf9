"""LLaVA-style bridge: ``[prompt, scene, map-query]`` embeddings through an LLM → queries."""
import contextlib
import os

import torch
from mmdet3d.registry import MODELS
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from .base_bridge import MapQueryBridge
from .hf_utils import (
    check_loading_info,
    check_pretrained_path,
    enable_activation_checkpointing,
    load_error,
    to_torch_dtype,
)
from .prompt_cache import (
    PromptStates,
    allow_checkpointing_with_prompt_cache,
    prefix_cache,
    prompt_states,
    recording_cache,
)

MODES = ('frozen', 'lora', 'full')
MAP_QUERY_ATTENTION = ('causal', 'bidirectional')
DEFAULT_PROMPT = ('A chat between a curious user and an artificial intelligence assistant. USER: '
                  'Describe the vectorized HD map around the ego vehicle (lane dividers, '
                  "pedestrian crossings, road boundaries) in this bird's-eye-view scene:")
DEFAULT_LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05,
                    target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'])


def byte_prompt_ids(prompt: str, vocab_size: int, bos_token_id: int | None) -> list[int]:
    """Tokenizer-free prompt ids for config-built LLMs: BOS, then each UTF-8 byte mod vocab.

    Deterministic, so a random-weight LLM always sees the same prompt tokens.
    """
    ids = [b % vocab_size for b in prompt.encode('utf-8')]
    return ([bos_token_id] if bos_token_id is not None else []) + ids


def _from_path(loader, path: str, what: str, **kwargs):
    """``loader.from_pretrained`` with errors that name the path (and offline mode)."""
    check_pretrained_path(path, what)
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as err:
        if os.path.isdir(path):
            raise
        raise load_error(path, what, err) from err


def build_causal_lm(llm_path: str | None, llm_cfg: dict | None, dtype: torch.dtype,
                    attn_implementation: str) -> PreTrainedModel:
    """Pretrained LLM from ``llm_path``, or a random one from a config dict (any size).

    A checkpoint missing weights, or holding some of another shape, raises
    ``PretrainedWeightsError`` naming them (transformers would only warn and init them
    randomly); unexpected keys are logged.
    """
    if llm_path is not None:
        # ignore_mismatched_sizes: let transformers report mismatches, then name them here.
        llm, info = _from_path(AutoModelForCausalLM, llm_path, 'LLM', dtype=dtype,
                               attn_implementation=attn_implementation,
                               output_loading_info=True, ignore_mismatched_sizes=True)
        check_loading_info(info, llm_path, 'LLM')
        return llm
    cfg = dict(llm_cfg)
    config = AutoConfig.for_model(cfg.pop('model_type', 'llama'), **cfg)
    return AutoModelForCausalLM.from_config(config, dtype=dtype,
                                            attn_implementation=attn_implementation)


def _drop_reloadable(module: 'LLMBridge', state_dict: dict, prefix: str, local_metadata) -> None:
    for key in module.reloadable_keys:
        state_dict.pop(prefix + key, None)


def _note_absent(module: 'LLMBridge', state_dict: dict, prefix: str, *args) -> None:
    absent = {prefix + k for k in module.reloadable_keys} - state_dict.keys()
    module._absent_keys = absent


def _drop_prompt_cache(module: 'LLMBridge', *args) -> None:
    # loading may change the LLM's weights, and with them the prompt's keys and values
    module._frozen_prompt = None


def _forgive_absent(module: 'LLMBridge', incompatible_keys) -> None:
    absent = getattr(module, '_absent_keys', set())
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys
                                         if k not in absent]


@MODELS.register_module()
class LLMBridge(MapQueryBridge):
    """Scene tokens → LLM → ``(B, num_map_queries, embed_dims)`` instance queries.

    The input sequence is ``[prompt tokens, scene_proj(scene tokens), map_queries]`` through
    the LLM's decoder stack (``get_decoder()``: no vocabulary logits are computed); the last
    hidden states at the map-query positions go through ``out_proj``. The prompt is tokenized
    once at construction (non-persistent buffer ``prompt_ids``).

    Prompt cache: the prompt is the same for every sample, so it runs once at batch 1 and the
    scene tokens and map queries (positions after it) attend to its keys and values through
    ``past_key_values`` (``prompt_cache.py``), expanded to the batch. In ``frozen`` mode those
    do not change at all: they are computed once, kept in the plain attribute
    ``_frozen_prompt`` (never in ``state_dict()``) and rebuilt when the LLM's device or dtype,
    the autocast state, or its weights (``load_state_dict``) change. In ``lora`` / ``full`` mode
    the prompt runs once per forward, with gradients.

    Modes: ``'frozen'`` (no LLM parameter trains, the LLM stays in eval mode, gradients still
    flow through it), ``'lora'`` (peft adapters on ``lora_cfg['target_modules']``; only they
    train in the LLM), ``'full'`` (every LLM parameter trains except an untied ``lm_head``,
    which the bridge never uses).

    Precision: ``dtype`` is the LLM's compute dtype. In ``frozen`` and ``lora`` mode the LLM's
    weights are stored in it and it runs with autocast switched off (inputs cast to it,
    outputs back to fp32); peft keeps the LoRA adapters in fp32. In ``full`` mode every trained
    LLM weight is an fp32 master and the LLM runs under autocast in ``dtype``: a bf16 weight
    cannot take an AdamW step of 1e-6 (its spacing near 0.02 is 1.2e-4, so ~98 % of the
    elements would never move). The cost at 7B is in docs/benchmarks.md.

    ``map_query_attention``: ``'causal'`` keeps the LLM's causal mask, so map query i reads
    only queries < i; ``'bidirectional'`` passes a 4-D mask in which prompt and scene tokens
    stay causal and the map-query block sees every earlier token and each other (a set has
    no order).

    Checkpoints: when the LLM comes from ``llm_path`` and ``mode != 'full'``, its frozen weights
    (``reloadable_keys``: every LLM tensor that is not a trainable parameter) are left out of
    ``state_dict()`` (state-dict post-hook) and their absence is forgiven by
    ``load_state_dict`` (load pre/post hooks, also under ``strict=True`` and mmengine's
    loader): they are reloaded from ``llm_path``. So a ``frozen`` checkpoint has no LLM
    weights and a ``lora`` one only the adapters. An LLM built from ``llm_cfg`` (random weights)
    has nothing to reload from, so its weights stay in the checkpoint and resume is exact.

    Parameter names (as the detector's ``bridge``): ``bridge.scene_proj``,
    ``bridge.map_queries``, ``bridge.out_proj``, ``bridge.llm``.

    Args:
        in_channels: Q-Former width of the scene tokens.
        embed_dims: output width (the map decoder's).
        num_map_queries: number of instance queries.
        llm_path: local folder or hub id for ``AutoModelForCausalLM.from_pretrained``.
        llm_cfg: instead of ``llm_path``: config fields (``model_type`` defaults to
            ``'llama'``) for a randomly initialised LLM, e.g. for tests and benchmarks.
        tokenizer_path: defaults to ``llm_path``. Without a path (``llm_cfg``) the prompt is
            turned into ids by ``byte_prompt_ids``.
        prompt: instruction text placed before the scene tokens.
        mode: ``'frozen'``, ``'lora'`` or ``'full'``.
        lora_cfg: ``LoraConfig`` fields overriding ``DEFAULT_LORA``.
        dtype: LLM weight dtype, ``'bf16'``, ``'fp16'`` or ``'fp32'``.
        attn_implementation: ``'sdpa'`` or ``'eager'``.
        gradient_checkpointing: recompute the decoder layers in backward
            (``use_reentrant=False``; also active in ``frozen`` mode).
        projector: ``'mlp'`` (LLaVA-1.5) or ``'linear'`` for ``scene_proj``.
        map_query_attention: ``'causal'`` or ``'bidirectional'`` (see above).
        prompt_cache: run the prompt once at batch 1 and attend to its keys and values (see
            above). ``False`` runs ``[prompt, scene, map queries]`` as one sequence, the same
            result at more compute. Sharded training (``FSDP2Strategy``) in ``lora`` /
            ``full`` mode needs ``False``: the cached states carry gradients from one call of
            a sharded decoder layer into the next, and FSDP2 frees the layer's gathered
            weights between calls.
    """

    def __init__(self,
                 in_channels: int,
                 embed_dims: int = 256,
                 num_map_queries: int = 50,
                 llm_path: str | None = None,
                 llm_cfg: dict | None = None,
                 tokenizer_path: str | None = None,
                 prompt: str = DEFAULT_PROMPT,
                 mode: str = 'frozen',
                 lora_cfg: dict | None = None,
                 dtype: str = 'bf16',
                 attn_implementation: str = 'sdpa',
                 gradient_checkpointing: bool = False,
                 projector: str = 'mlp',
                 map_query_attention: str = 'causal',
                 prompt_cache: bool = True,
                 init_cfg: dict | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        if map_query_attention not in MAP_QUERY_ATTENTION:
            raise ValueError(f'map_query_attention must be one of {MAP_QUERY_ATTENTION}, '
                             f'got {map_query_attention!r}')
        if map_query_attention == 'bidirectional' and attn_implementation not in ('sdpa',
                                                                                 'eager'):
            raise ValueError("map_query_attention='bidirectional' needs a 4-D attention mask: "
                             f"attn_implementation 'sdpa' or 'eager', got {attn_implementation!r}")
        if (llm_path is None) == (llm_cfg is None):
            raise ValueError('LLMBridge needs exactly one of llm_path and llm_cfg')
        compute_dtype = to_torch_dtype(dtype)
        # full fine-tuning keeps fp32 master weights; the others store the LLM in compute dtype
        weight_dtype = torch.float32 if mode == 'full' else compute_dtype
        llm = build_causal_lm(llm_path, llm_cfg, weight_dtype, attn_implementation)
        embed = llm.get_input_embeddings()
        # Map queries start at the scale of the LLM's own token embeddings.
        super().__init__(in_channels, embed.embedding_dim, embed_dims, num_map_queries,
                         projector, query_std=embed.weight.float().std().item(),
                         init_cfg=init_cfg)
        self.mode = mode
        self.compute_dtype = compute_dtype
        self.map_query_attention = map_query_attention
        self.prompt_cache = bool(prompt_cache)
        prompt_ids = self._tokenize(prompt, llm, tokenizer_path or llm_path)
        self.register_buffer('prompt_ids', torch.tensor(prompt_ids, dtype=torch.long),
                             persistent=False)
        if gradient_checkpointing:
            enable_activation_checkpointing(llm)
        allow_checkpointing_with_prompt_cache(llm)
        self.llm = self._apply_mode(llm, mode, lora_cfg, compute_dtype)
        self._frozen_prompt: tuple[tuple, PromptStates] | None = None
        self.reloadable_keys: frozenset[str] = frozenset()
        if llm_path is not None and mode != 'full':
            self.reloadable_keys = frozenset(
                'llm.' + k for k, v in self.llm.state_dict(keep_vars=True).items()
                if not (isinstance(v, nn.Parameter) and v.requires_grad))
        self.register_state_dict_post_hook(_drop_reloadable)
        self.register_load_state_dict_pre_hook(_note_absent)
        self.register_load_state_dict_pre_hook(_drop_prompt_cache)
        self.register_load_state_dict_post_hook(_forgive_absent)
        self.train()

    @staticmethod
    def _tokenize(prompt: str, llm: PreTrainedModel, tokenizer_path: str | None) -> list[int]:
        if tokenizer_path is None:
            return byte_prompt_ids(prompt, llm.config.vocab_size, llm.config.bos_token_id)
        tokenizer = _from_path(AutoTokenizer, tokenizer_path, 'tokenizer')
        return tokenizer(prompt)['input_ids']

    @staticmethod
    def _apply_mode(llm: PreTrainedModel, mode: str, lora_cfg: dict | None,
                    compute_dtype: torch.dtype) -> nn.Module:
        if mode == 'frozen':
            llm.requires_grad_(False)
        elif mode == 'lora':
            # autocast_adapter_dtype (peft's default) keeps the adapters fp32 on a bf16 base
            llm = get_peft_model(llm, LoraConfig(task_type='CAUSAL_LM',
                                                 **{**DEFAULT_LORA, **(lora_cfg or {})}),
                                 autocast_adapter_dtype=True)
        else:
            head = llm.get_output_embeddings()
            if head is not None and head.weight is not llm.get_input_embeddings().weight:
                # never used by the bridge and never trained: no fp32 master needed
                head.requires_grad_(False)
                head.to(compute_dtype)
        return llm

    @property
    def decoder(self) -> nn.Module:
        """The LLM without its vocabulary head (adapters included in ``lora`` mode)."""
        llm = self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm
        return llm.get_decoder()

    def train(self, mode: bool = True) -> 'LLMBridge':
        """In ``frozen`` mode keep the LLM in eval mode.

        Only the flags of the checkpointed decoder layers follow ``mode``: transformers
        checkpoints a layer only while it is training, and those layers hold no dropout of
        their own (their attention/MLP children stay in eval mode).
        """
        super().train(mode)
        if self.mode == 'frozen':
            self.llm.eval()
            for module in self.llm.modules():
                if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
                    module.training = mode
        return self

    def init_weights(self) -> None:
        """Keep the weights set at construction (mmengine must not re-init the HF model)."""

    def _precision_context(self, device_type: str, weight_dtype: torch.dtype):
        """Autocast off for half-precision weights, on in ``compute_dtype`` for fp32 masters
        with a half compute dtype, untouched (the caller's) for an fp32 LLM."""
        if weight_dtype != torch.float32:
            return torch.autocast(device_type, enabled=False)
        if self.compute_dtype != torch.float32:
            return torch.autocast(device_type, dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def map_query_mask(self, batch: int, seq_len: int, num_queries: int,
                       dtype: torch.dtype, device: torch.device, past_len: int = 0) -> Tensor:
        """``(B, 1, L, past_len + L)`` mask of ``L`` new tokens after ``past_len`` cached ones:
        causal, except that the last ``num_queries`` rows (the map queries) see every position.
        Boolean (True = attend) for SDPA, additive for eager."""
        rows = torch.arange(past_len, past_len + seq_len, device=device)
        cols = torch.arange(past_len + seq_len, device=device)
        allowed = ((cols[None, :] <= rows[:, None])
                   | (rows[:, None] >= past_len + seq_len - num_queries))
        allowed = allowed[None, None].expand(batch, 1, seq_len, past_len + seq_len)
        if self.decoder.config._attn_implementation == 'sdpa':
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min)

    def _run_prompt(self, decoder: nn.Module) -> PromptStates:
        """The prompt's per-layer keys and values at batch 1."""
        embeds = decoder.get_input_embeddings()(self.prompt_ids).unsqueeze(0)
        cache = recording_cache(decoder.config.num_hidden_layers)
        decoder(inputs_embeds=embeds, past_key_values=cache, use_cache=False)
        return prompt_states(cache)

    @torch.compiler.disable
    def _prompt_states(self, decoder: nn.Module) -> PromptStates:
        """Eager even in a compiled model: the frozen states are kept across calls (a CUDA
        graph's outputs would be overwritten by its next replay), and whether they exist yet
        must not become a guard that recompiles the second call."""
        if self.mode != 'frozen':
            return self._run_prompt(decoder)
        weight = decoder.get_input_embeddings().weight
        device_type = weight.device.type
        key = (weight.device, weight.dtype, torch.is_autocast_enabled(device_type),
               torch.get_autocast_dtype(device_type))
        if self._frozen_prompt is None or self._frozen_prompt[0] != key:
            with torch.no_grad():
                self._frozen_prompt = (key, self._run_prompt(decoder))
        return self._frozen_prompt[1]

    def fuse(self, scene: Tensor, queries: Tensor) -> Tensor:
        decoder = self.decoder
        embed = decoder.get_input_embeddings()
        dtype = embed.weight.dtype
        parts = [scene.to(dtype), queries.to(dtype)]
        if not self.prompt_cache:  # the prompt in the sequence, one pass per layer
            prompt = embed(self.prompt_ids).to(dtype)
            parts.insert(0, prompt.unsqueeze(0).expand(scene.shape[0], -1, -1))
        seq = torch.cat(parts, dim=1)
        batch, length = seq.shape[:2]
        past = self.prompt_ids.numel() if self.prompt_cache else 0
        mask = None
        if self.map_query_attention == 'bidirectional':
            mask = self.map_query_mask(batch, length, queries.shape[1], self.compute_dtype,
                                       seq.device, past_len=past)
        positions = torch.arange(past, past + length, device=seq.device).unsqueeze(0)
        with self._precision_context(seq.device.type, dtype):
            cache = prefix_cache(self._prompt_states(decoder), batch) if past else None
            hidden = decoder(inputs_embeds=seq, attention_mask=mask, position_ids=positions,
                             past_key_values=cache, use_cache=False).last_hidden_state
        return hidden[:, -queries.shape[1]:]
