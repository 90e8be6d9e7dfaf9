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
from .hf_utils import check_pretrained_path, load_error, to_torch_dtype

MODES = ('frozen', 'lora', 'full')
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
    """Pretrained LLM from ``llm_path``, or a random one from a config dict (any size)."""
    if llm_path is not None:
        return _from_path(AutoModelForCausalLM, llm_path, 'LLM', dtype=dtype,
                          attn_implementation=attn_implementation)
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


def _forgive_absent(module: 'LLMBridge', incompatible_keys) -> None:
    absent = getattr(module, '_absent_keys', set())
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys
                                         if k not in absent]


@MODELS.register_module()
class LLMBridge(MapQueryBridge):
    """Scene tokens → LLM → ``(B, num_map_queries, embed_dims)`` instance queries.

    The input sequence is ``[prompt tokens, scene_proj(scene tokens), map_queries]`` fed as
    ``inputs_embeds`` to the LLM's decoder stack (``get_decoder()``: no vocabulary logits are
    computed); the last hidden states at the map-query positions go through ``out_proj``.
    The prompt is tokenized once at construction (non-persistent buffer ``prompt_ids``).

    Modes: ``'frozen'`` (no LLM parameter trains, the LLM stays in eval mode, gradients still
    flow through it), ``'lora'`` (peft adapters on ``lora_cfg['target_modules']``; only they
    train in the LLM), ``'full'`` (every LLM parameter trains except an untied ``lm_head``,
    which the bridge never uses). The LLM runs in ``dtype`` with autocast switched off inside it
    (when half precision); inputs are cast to it and outputs back to fp32 at the boundary.

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
                 init_cfg: dict | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        if (llm_path is None) == (llm_cfg is None):
            raise ValueError('LLMBridge needs exactly one of llm_path and llm_cfg')
        llm = build_causal_lm(llm_path, llm_cfg, to_torch_dtype(dtype), attn_implementation)
        embed = llm.get_input_embeddings()
        # Map queries start at the scale of the LLM's own token embeddings.
        super().__init__(in_channels, embed.embedding_dim, embed_dims, num_map_queries,
                         projector, query_std=embed.weight.float().std().item(),
                         init_cfg=init_cfg)
        self.mode = mode
        prompt_ids = self._tokenize(prompt, llm, tokenizer_path or llm_path)
        self.register_buffer('prompt_ids', torch.tensor(prompt_ids, dtype=torch.long),
                             persistent=False)
        if gradient_checkpointing:
            kwargs = {'use_reentrant': False}
            if hasattr(llm, 'activation_checkpointing_enable'):  # transformers >= 5.2x
                llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.llm = self._apply_mode(llm, mode, lora_cfg)
        self.reloadable_keys: frozenset[str] = frozenset()
        if llm_path is not None and mode != 'full':
            self.reloadable_keys = frozenset(
                'llm.' + k for k, v in self.llm.state_dict(keep_vars=True).items()
                if not (isinstance(v, nn.Parameter) and v.requires_grad))
        self.register_state_dict_post_hook(_drop_reloadable)
        self.register_load_state_dict_pre_hook(_note_absent)
        self.register_load_state_dict_post_hook(_forgive_absent)
        self.train()

    @staticmethod
    def _tokenize(prompt: str, llm: PreTrainedModel, tokenizer_path: str | None) -> list[int]:
        if tokenizer_path is None:
            return byte_prompt_ids(prompt, llm.config.vocab_size, llm.config.bos_token_id)
        tokenizer = _from_path(AutoTokenizer, tokenizer_path, 'tokenizer')
        return tokenizer(prompt)['input_ids']

    @staticmethod
    def _apply_mode(llm: PreTrainedModel, mode: str, lora_cfg: dict | None) -> nn.Module:
        if mode == 'frozen':
            llm.requires_grad_(False)
        elif mode == 'lora':
            llm = get_peft_model(llm, LoraConfig(task_type='CAUSAL_LM',
                                                 **{**DEFAULT_LORA, **(lora_cfg or {})}))
        else:
            head = llm.get_output_embeddings()
            if head is not None and head.weight is not llm.get_input_embeddings().weight:
                head.requires_grad_(False)
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

    def fuse(self, scene: Tensor, queries: Tensor) -> Tensor:
        decoder = self.decoder
        embed = decoder.get_input_embeddings()
        dtype = embed.weight.dtype
        prompt = embed(self.prompt_ids).unsqueeze(0).expand(scene.shape[0], -1, -1)
        seq = torch.cat([prompt.to(dtype), scene.to(dtype), queries.to(dtype)], dim=1)
        no_autocast = torch.autocast(seq.device.type, enabled=False)
        with no_autocast if dtype != torch.float32 else contextlib.nullcontext():
            hidden = decoder(inputs_embeds=seq, use_cache=False).last_hidden_state
        return hidden[:, -queries.shape[1]:]
