"""LLaVA-style bridge: ``[prompt, scene, map-query, question, answer]`` through an LLM.

The map queries' hidden states become the map head's instance queries; the answer tokens get a
next-token loss, and the same sequence up to the question drives text generation.
"""
import contextlib
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmdet3d.registry import MODELS
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
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
from .text_codec import (
    IGNORE_INDEX,
    ByteCodec,
    QABatch,
    TextCodec,
    TokenizerCodec,
    encode_qa,
)

MODES = ('frozen', 'lora', 'full')
MAP_QUERY_ATTENTION = ('causal', 'bidirectional')
DEFAULT_PROMPT = ('A chat between a curious user and an artificial intelligence assistant. USER: '
                  'Describe the vectorized HD map around the ego vehicle (lane dividers, '
                  "pedestrian crossings, road boundaries) in this bird's-eye-view scene:")
DEFAULT_LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05,
                    target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'])
# Vicuna v1 turn layout: [prompt "... USER: <instruction>", scene, map queries, question, answer]
DEFAULT_QUESTION_TEMPLATE = '\n{question} ASSISTANT:'


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
    train in the LLM), ``'full'`` (every LLM parameter trains; an untied ``lm_head`` only when
    ``lm_loss_weight > 0``: without the LM loss nothing reads it, so it stays frozen in
    ``dtype`` with no fp32 master).

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

    Language: ``forward_with_text(scene_tokens, questions, answers)`` appends one
    ``[question_template.format(question=q), answer, EOS]`` per sample after the map queries,
    right-padded, and returns ``(queries, dict(loss_lm=...))``; ``loss_lm`` is
    ``lm_loss_weight`` × the mean cross-entropy of the answer tokens (EOS included) predicted
    from the position before each, over every answer token of the batch. The map queries come
    before the text and every text row is causal, so their states (and the map head's input)
    do not depend on the text; right padding sits after every real token of its row, so no
    row that is scored or read ever attends to it and no padding mask is needed (with the
    prompt cache either). Only the scored positions go through the vocabulary head
    (``get_output_embeddings()``). ``generate(scene_tokens, questions)`` answers greedily
    with transformers' ``generate``: the bridge itself runs ``[prompt, scene, map queries]``
    into a ``DynamicCache`` (so ``map_query_attention`` and the prompt cache are as in
    training), then ``generate`` continues it from ``inputs_embeds`` of the questions, which
    are left-padded against the map queries and masked (``attention_mask``; transformers
    numbers the positions from it, so each question follows its map queries directly, as in
    training). ``frozen`` mode trains ``scene_proj`` / ``map_queries`` and what feeds them
    (Q-Former) to make the frozen LLM answer (LLaVA stage 1); ``lora`` / ``full`` also train
    the LLM. Text ids come from the tokenizer, or for an ``llm_cfg`` LLM from ``ByteCodec``
    (``text_codec.py``). With ``lm_loss_weight=0`` and ``forward`` the bridge is exactly the
    map-only one.

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
        lm_loss_weight: weight of ``loss_lm`` in ``forward_with_text``. ``0`` keeps
            ``full`` mode's untied ``lm_head`` frozen (see Modes).
        max_answer_tokens: the longest answer in ids, EOS included: a longer training
            answer is an error, and it is ``generate``'s default ``max_new_tokens``.
        question_template: the question's text around ``{question}``, after the map queries.
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
                 lm_loss_weight: float = 0.0,
                 max_answer_tokens: int = 128,
                 question_template: str = DEFAULT_QUESTION_TEMPLATE,
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
        if lm_loss_weight < 0:
            raise ValueError(f'lm_loss_weight must be >= 0, got {lm_loss_weight}')
        if max_answer_tokens < 1:
            raise ValueError(f'max_answer_tokens must be >= 1, got {max_answer_tokens}')
        if '{question}' not in question_template:
            raise ValueError(f'question_template {question_template!r} has no {{question}}')
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
        self.lm_loss_weight = float(lm_loss_weight)
        self.max_answer_tokens = max_answer_tokens
        self.question_template = question_template
        self.codec = self._build_codec(llm, tokenizer_path or llm_path)
        prompt_ids = self.codec.prompt_ids(prompt)
        self.register_buffer('prompt_ids', torch.tensor(prompt_ids, dtype=torch.long),
                             persistent=False)
        if gradient_checkpointing:
            enable_activation_checkpointing(llm)
        allow_checkpointing_with_prompt_cache(llm)
        self.llm = self._apply_mode(llm, mode, lora_cfg, compute_dtype,
                                    train_head=self.lm_loss_weight > 0)
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
    def _build_codec(llm: PreTrainedModel, tokenizer_path: str | None) -> TextCodec:
        config = llm.config
        if tokenizer_path is None:
            return ByteCodec(config.vocab_size, config.bos_token_id, config.eos_token_id)
        tokenizer = _from_path(AutoTokenizer, tokenizer_path, 'tokenizer')
        return TokenizerCodec(tokenizer, tokenizer_path, config.eos_token_id)

    @staticmethod
    def _apply_mode(llm: PreTrainedModel, mode: str, lora_cfg: dict | None,
                    compute_dtype: torch.dtype, train_head: bool = False) -> nn.Module:
        if mode == 'frozen':
            llm.requires_grad_(False)
        elif mode == 'lora':
            # autocast_adapter_dtype (peft's default) keeps the adapters fp32 on a bf16 base
            llm = get_peft_model(llm, LoraConfig(task_type='CAUSAL_LM',
                                                 **{**DEFAULT_LORA, **(lora_cfg or {})}),
                                 autocast_adapter_dtype=True)
        else:
            head = llm.get_output_embeddings()
            if (not train_head and head is not None
                    and head.weight is not llm.get_input_embeddings().weight):
                # unused without the LM loss and never trained: no fp32 master needed
                head.requires_grad_(False)
                head.to(compute_dtype)
        return llm

    @property
    def causal_lm(self) -> PreTrainedModel:
        """The transformers causal LM (adapters injected in ``lora`` mode)."""
        return self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm

    @property
    def decoder(self) -> nn.Module:
        """The LLM without its vocabulary head (adapters included in ``lora`` mode)."""
        return self.causal_lm.get_decoder()

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
                       dtype: torch.dtype, device: torch.device, past_len: int = 0,
                       num_after: int = 0) -> Tensor:
        """``(B, 1, L, past_len + L)`` mask of ``L`` new tokens after ``past_len`` cached ones:
        causal, except that the ``num_queries`` rows before the last ``num_after`` (the map
        queries, then the text) see every position up to the end of the map-query block.
        Boolean (True = attend) for SDPA, additive for eager."""
        rows = torch.arange(past_len, past_len + seq_len, device=device)
        cols = torch.arange(past_len + seq_len, device=device)
        end = past_len + seq_len - num_after
        in_block = (rows >= end - num_queries) & (rows < end)
        allowed = ((cols[None, :] <= rows[:, None])
                   | (in_block[:, None] & (cols[None, :] < end)))
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
        return self._decode(scene, queries)[0]

    def _decode(self, scene: Tensor, queries: Tensor, text: Tensor | None = None,
                cache: Cache | None = None) -> tuple[Tensor, Tensor]:
        """Hidden states of the map queries and of the ``text`` embeddings after them.

        ``cache`` (an empty ``DynamicCache``): filled with the keys and values of
        ``[prompt, scene, queries]``, for ``generate`` to continue.
        """
        decoder = self.decoder
        embed = decoder.get_input_embeddings()
        dtype = embed.weight.dtype
        parts = [scene.to(dtype), queries.to(dtype)]
        num_text = 0
        if text is not None:
            parts.append(text.to(dtype))
            num_text = text.shape[1]
        if not self.prompt_cache:  # the prompt in the sequence, one pass per layer
            prompt = embed(self.prompt_ids).to(dtype)
            parts.insert(0, prompt.unsqueeze(0).expand(scene.shape[0], -1, -1))
        seq = torch.cat(parts, dim=1)
        batch, length = seq.shape[:2]
        past = self.prompt_ids.numel() if self.prompt_cache else 0
        mask = None
        if self.map_query_attention == 'bidirectional':
            mask = self.map_query_mask(batch, length, queries.shape[1], self.compute_dtype,
                                       seq.device, past_len=past, num_after=num_text)
        positions = torch.arange(past, past + length, device=seq.device).unsqueeze(0)
        with self._precision_context(seq.device.type, dtype):
            if cache is None:
                cache = prefix_cache(self._prompt_states(decoder), batch) if past else None
            elif past:
                for layer, (keys, values) in enumerate(self._prompt_states(decoder)):
                    cache.update(keys.expand(batch, -1, -1, -1),
                                 values.expand(batch, -1, -1, -1), layer)
            hidden = decoder(inputs_embeds=seq, attention_mask=mask, position_ids=positions,
                             past_key_values=cache,
                             use_cache=isinstance(cache, DynamicCache)).last_hidden_state
        end = length - num_text
        return hidden[:, end - queries.shape[1]:end], hidden[:, end:]

    def encode_qa(self, questions: Sequence[str | None],
                  answers: Sequence[str | None]) -> QABatch:
        """The bridge's codec, template and answer limit applied to one pair per row."""
        return encode_qa(self.codec, questions, answers, self.question_template,
                         self.max_answer_tokens, device=self.prompt_ids.device)

    def forward_with_text(self, scene_tokens: Tensor, questions: Sequence[str | None],
                          answers: Sequence[str | None],
                          rows: Sequence[int] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """One forward, two outputs: the map queries and the answer loss.

        ``questions[i]`` / ``answers[i]``: the ``i``-th pair (``None``: no text), asked about
        sample ``rows[i]`` (default: pair ``b`` is sample ``b``'s only one). With several pairs
        per sample, each is a sequence of its own over that sample's scene, as at generation;
        the map queries, causal-masked from the text, are read from each sample's first one.
        Returns ``(B, num_map_queries, embed_dims)`` queries (as ``forward``) and
        ``dict(loss_lm=...)``.
        """
        batch = scene_tokens.shape[0]
        if len(questions) != len(answers):
            raise ValueError(f'got {len(questions)} questions but {len(answers)} answers')
        if rows is None and len(questions) != batch:
            raise ValueError(f'got {len(questions)} questions for a batch of {batch} scenes '
                             '(pass rows= to ask several per scene)')
        scene = self.scene_proj(scene_tokens)
        first = None
        if rows is not None:
            rows = [int(r) for r in rows]
            if len(rows) != len(questions):
                raise ValueError(f'got {len(rows)} rows for {len(questions)} questions')
            missing = sorted(set(range(batch)) - set(rows))
            if missing or any(r >= batch or r < 0 for r in rows):
                raise ValueError(f'rows must name every scene of the batch (0..{batch - 1}) '
                                 f'at least once; got {rows}')
            first = torch.tensor([rows.index(b) for b in range(batch)], device=scene.device)
            scene = scene[torch.tensor(rows, device=scene.device)]
        queries = self.map_queries.unsqueeze(0).expand(scene.shape[0], -1, -1)
        qa = self.encode_qa(questions, answers)
        text = self.decoder.get_input_embeddings()(qa.input_ids)
        states, text_states = self._decode(scene, queries, text)
        if first is not None:
            states = states[first]
        out = self.out_proj(states.to(self.out_proj.weight.dtype))
        return out, dict(loss_lm=self.lm_loss_weight * self.answer_loss(text_states, qa.labels))

    def answer_loss(self, text_states: Tensor, labels: Tensor) -> Tensor:
        """Mean next-token cross-entropy over the scored (answer) positions of the batch.

        Only those hidden states go through the vocabulary head; no scored token gives 0
        (still connected to the head, so every trained parameter gets a gradient).
        """
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        hidden = text_states[:, :-1][scored]
        head = self.causal_lm.get_output_embeddings()
        with self._precision_context(hidden.device.type, head.weight.dtype):
            logits = head(hidden.to(head.weight.dtype))
        loss = F.cross_entropy(logits.float(), targets[scored], reduction='sum')
        return loss / scored.sum().clamp(min=1)

    @torch.no_grad()
    def generate(self, scene_tokens: Tensor, questions: Sequence[str],
                 max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers, one per sample, read from the same scene as the map queries.

        Call it in eval mode (``lora`` / ``full`` dropout would otherwise sample).
        """
        if len(questions) != scene_tokens.shape[0]:
            raise ValueError(f'got {len(questions)} questions for a batch of '
                             f'{scene_tokens.shape[0]} scenes')
        if not questions:
            return []
        eos = self.codec.eos_token_id
        rows = [self.codec.encode(self.question_template.format(question=q)) for q in questions]
        if not all(rows):
            raise ValueError(f'a question encodes to no tokens with template '
                             f'{self.question_template!r}: {questions!r}')
        batch, width = len(rows), max(len(r) for r in rows)
        device = self.prompt_ids.device
        ids = torch.full((batch, width), eos, dtype=torch.long, device=device)
        text_mask = torch.zeros(batch, width, dtype=torch.long, device=device)
        for b, row in enumerate(rows):  # left-padded: each question ends at the same column
            ids[b, width - len(row):] = torch.tensor(row, device=device)
            text_mask[b, width - len(row):] = 1
        scene = self.scene_proj(scene_tokens)
        queries = self.map_queries.unsqueeze(0).expand(batch, -1, -1)
        decoder = self.decoder
        cache = DynamicCache(config=decoder.config)
        self._decode(scene, queries, cache=cache)
        prefix = cache.get_seq_length()
        text = decoder.get_input_embeddings()(ids)
        # generate embeds only the positions after the cache; the prefix rows are placeholders
        embeds = torch.cat([text.new_zeros(batch, prefix, text.shape[-1]), text], dim=1)
        mask = torch.cat([text_mask.new_ones(batch, prefix), text_mask], dim=1)
        with self._precision_context(device.type, text.dtype):
            out = self.causal_lm.generate(
                inputs_embeds=embeds, attention_mask=mask, past_key_values=cache,
                max_new_tokens=max_new_tokens or self.max_answer_tokens, do_sample=False,
                num_beams=1, eos_token_id=eos, pad_token_id=eos)
        # from inputs_embeds alone (no input_ids), generate returns only the new tokens
        return [self.codec.decode(row[:row.index(eos)] if eos in row else row)
                for row in out.tolist()]
