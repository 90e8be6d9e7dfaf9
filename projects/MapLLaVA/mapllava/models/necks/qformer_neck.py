"""BLIP-2 Q-Former over the BEV map: a fixed number of scene tokens for the LLM bridge."""
from collections.abc import Sequence

import torch
from mmdet.models.layers import SinePositionalEncoding
from mmdet3d.registry import MODELS
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch import Tensor, nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from ..llm.hf_utils import (
    PretrainedWeightsError,
    check_pretrained_path,
    check_state_fits,
    enable_activation_checkpointing,
    list_tensor_names,
    preview_keys,
    read_config,
    read_tensors,
)

QFORMER_PREFIX = 'qformer.'
QUERY_TOKENS_KEY = 'query_tokens'
SUPPORTED_LAYOUT = ('Supported is the Hugging Face Blip2Model / Blip2ForConditionalGeneration '
                    'layout (qformer.* + query_tokens).')
OTHER_LAYOUTS = (
    ('Qformer.bert.', 'a LAVIS (Salesforce/LAVIS) BLIP-2 checkpoint',
     "convert it with transformers' convert_blip_2_original_to_pytorch.py"),
    ('qformer.embeddings.', 'an InstructBLIP checkpoint (its Q-Former has instruction '
     'embeddings and no top-level qformer.layernorm)', 'use a BLIP-2 checkpoint such as '
     'Salesforce/blip2-opt-2.7b'),
)


def _is_qformer_key(key: str) -> bool:
    return key.startswith(QFORMER_PREFIX) or key == QUERY_TOKENS_KEY


def layout_hint(keys: list[str]) -> str:
    """Which known unsupported layout the checkpoint keys look like ('' if none)."""
    for prefix, name, todo in OTHER_LAYOUTS:
        found = [k for k in keys if k.startswith(prefix)]
        if found:
            return (f'It looks like {name} (keys such as {preview_keys(found, 3)}): '
                    f'{todo}. {SUPPORTED_LAYOUT}')
    return ''


@MODELS.register_module()
class QFormerNeck(BaseModule):
    """Compress a BEV map ``(B, C, H, W)`` into ``(B, num_query_tokens, hidden_size)`` tokens.

    The BEV cells are the Q-Former's cross-attention memory (``encoder_hidden_states``): BEV →
    optional downsampling → flatten → ``bev_proj`` (Linear + LayerNorm to
    ``encoder_hidden_size``) → + 2-D sine positional encoding. The sine encoding (normalised
    DETR-style, mmdet's ``SinePositionalEncoding``) is size-agnostic, so one model serves any
    BEV grid; it is added after the LayerNorm so its scale is fixed relative to the features
    whatever the BEV encoder's output range is.

    Args:
        in_channels: BEV channels ``C``.
        qformer_cfg: ``Blip2QFormerConfig`` fields (hidden_size, num_hidden_layers,
            num_attention_heads, intermediate_size, encoder_hidden_size,
            cross_attention_frequency, attn_implementation, ...). With ``pretrained`` the
            checkpoint's ``qformer_config`` is the base and these keys override it (e.g.
            dropout); overriding a shape makes loading fail.
        num_query_tokens: learnable queries; ``None`` → the checkpoint's value, else 32.
        pretrained: local folder or hub id of a BLIP-2 checkpoint (``Blip2Model`` /
            ``Blip2ForConditionalGeneration`` layout). Only ``qformer.*`` and ``query_tokens``
            are read, and every Q-Former weight must be there with its shape (else
            ``PretrainedWeightsError``, e.g. for LAVIS or InstructBLIP checkpoints); ``None``
            starts from scratch.
        downsample: BEV stride before flattening (1 = none). 200×100 cells are 20k memory
            tokens; 2 gives 5k.
        downsample_mode: ``'avg'`` (parameter-free average pooling) or ``'conv'`` (strided
            conv).
        gradient_checkpointing: recompute the Q-Former layers in backward (transformers'
            non-reentrant activation checkpointing; training only).
    """

    def __init__(self,
                 in_channels: int,
                 qformer_cfg: dict | None = None,
                 num_query_tokens: int | None = None,
                 pretrained: str | None = None,
                 downsample: int = 1,
                 downsample_mode: str = 'avg',
                 gradient_checkpointing: bool = False,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        base_cfg, state = {}, None
        if pretrained is not None:
            check_pretrained_path(pretrained, 'BLIP-2 checkpoint')
            blip2_cfg = read_config(pretrained, 'BLIP-2 checkpoint')
            if 'qformer_config' not in blip2_cfg:
                raise ValueError(f'{pretrained!r} is not a BLIP-2 checkpoint: its config.json '
                                 'has no qformer_config')
            base_cfg = blip2_cfg['qformer_config']
            if num_query_tokens is None:
                num_query_tokens = blip2_cfg.get('num_query_tokens', 32)
            state = read_tensors(pretrained, _is_qformer_key, 'BLIP-2 checkpoint')
        config = Blip2QFormerConfig.from_dict({**base_cfg, **(qformer_cfg or {})})
        hidden, memory_dims = config.hidden_size, config.encoder_hidden_size
        if memory_dims % 4:
            raise ValueError('encoder_hidden_size must be a multiple of 4 for the 2-D sine '
                             f'positional encoding, got {memory_dims}')
        self.num_query_tokens = num_query_tokens or 32
        self.hidden_size = hidden

        if downsample_mode not in ('avg', 'conv'):
            raise ValueError(f"downsample_mode must be 'avg' or 'conv', got {downsample_mode!r}")
        if downsample == 1:
            self.bev_downsample = nn.Identity()
        elif downsample_mode == 'avg':
            self.bev_downsample = nn.AvgPool2d(downsample, ceil_mode=True)
        else:
            self.bev_downsample = nn.Conv2d(in_channels, in_channels, downsample, downsample)
        self.bev_proj = nn.Sequential(nn.Linear(in_channels, memory_dims),
                                      nn.LayerNorm(memory_dims))
        self.bev_pos = SinePositionalEncoding(memory_dims // 2, normalize=True)
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(
            torch.randn(1, self.num_query_tokens, hidden) * config.initializer_range)
        if state is not None:
            self._load_pretrained(state, pretrained)
        if gradient_checkpointing:
            enable_activation_checkpointing(self.qformer)

    def _load_pretrained(self, state: dict[str, Tensor], path: str) -> None:
        """Copy the checkpoint's Q-Former and query tokens in; refuse anything that does not fit.

        A checkpoint of another layout would otherwise leave the Q-Former at random init.
        """
        if not any(k.startswith(QFORMER_PREFIX) for k in state):
            keys = list_tensor_names(path, 'BLIP-2 checkpoint')
            raise PretrainedWeightsError(
                f'BLIP-2 checkpoint {path!r} has no qformer.* tensors ({len(keys)} tensors, '
                f'e.g. {preview_keys(keys, 5)}). '
                + (layout_hint(keys) or SUPPORTED_LAYOUT))
        expected = {QFORMER_PREFIX + k: v for k, v in self.qformer.state_dict().items()}
        expected[QUERY_TOKENS_KEY] = self.query_tokens
        check_state_fits(expected, state, path, 'BLIP-2 checkpoint',
                         hint=layout_hint(list(state)))
        qformer_state = {k[len(QFORMER_PREFIX):]: v for k, v in state.items()
                         if k.startswith(QFORMER_PREFIX)}
        self.qformer.load_state_dict(qformer_state, strict=True)
        with torch.no_grad():
            self.query_tokens.copy_(state[QUERY_TOKENS_KEY])
        MMLogger.get_current_instance().info(
            f'QFormerNeck: loaded {len(state)} tensors (qformer.*, query_tokens) from BLIP-2 '
            f'checkpoint {path!r}: {sorted(state)}')

    def init_weights(self) -> None:
        """Keep the weights set at construction.

        mmengine's recursive ``init_weights`` would otherwise reach the Hugging Face Q-Former
        (``PreTrainedModel.init_weights``) after the BLIP-2 weights were loaded.
        """

    def forward(self, bev: Tensor | Sequence[Tensor]) -> Tensor:
        """``(B, C, H, W)`` BEV (or a one-element list) → ``(B, num_query_tokens, hidden)``."""
        if isinstance(bev, (list, tuple)):
            if len(bev) != 1:
                raise ValueError(f'QFormerNeck takes one BEV map, got {len(bev)}')
            bev = bev[0]
        bev = self.bev_downsample(bev)
        batch, _, height, width = bev.shape
        memory = self.bev_proj(bev.flatten(2).transpose(1, 2))
        pos = self.bev_pos(bev.new_zeros((1, height, width), dtype=torch.bool))
        memory = memory + pos.flatten(2).transpose(1, 2).to(memory.dtype)
        queries = self.query_tokens.expand(batch, -1, -1)
        return self.qformer(query_embeds=queries, encoder_hidden_states=memory).last_hidden_state
