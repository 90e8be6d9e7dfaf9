"""BLIP-2 Q-Former over the BEV map: a fixed number of scene tokens for the LLM bridge."""
from collections.abc import Sequence

import torch
from mmdet.models.layers import SinePositionalEncoding
from mmdet3d.registry import MODELS
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch import Tensor, nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from ..llm.hf_utils import check_pretrained_path, read_config, read_tensors

QFORMER_PREFIX = 'qformer.'
QUERY_TOKENS_KEY = 'query_tokens'


def _is_qformer_key(key: str) -> bool:
    return key.startswith(QFORMER_PREFIX) or key == QUERY_TOKENS_KEY


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
            are read; ``None`` starts from scratch.
        downsample: BEV stride before flattening (1 = none). 200×100 cells are 20k memory
            tokens; 2 gives 5k.
        downsample_mode: ``'avg'`` (parameter-free average pooling) or ``'conv'`` (strided
            conv).
    """

    def __init__(self,
                 in_channels: int,
                 qformer_cfg: dict | None = None,
                 num_query_tokens: int | None = None,
                 pretrained: str | None = None,
                 downsample: int = 1,
                 downsample_mode: str = 'avg',
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

    def _load_pretrained(self, state: dict[str, Tensor], path: str) -> None:
        """Copy the checkpoint's Q-Former and query tokens in, logging what matched."""
        qformer_state = {k[len(QFORMER_PREFIX):]: v for k, v in state.items()
                         if k.startswith(QFORMER_PREFIX)}
        result = self.qformer.load_state_dict(qformer_state, strict=False)
        missing = [QFORMER_PREFIX + k for k in result.missing_keys]
        unexpected = [QFORMER_PREFIX + k for k in result.unexpected_keys]
        if QUERY_TOKENS_KEY in state:
            tokens = state[QUERY_TOKENS_KEY]
            if tokens.shape != self.query_tokens.shape:
                raise ValueError(f'query_tokens in {path!r} have shape {tuple(tokens.shape)}, '
                                 f'expected {tuple(self.query_tokens.shape)}')
            with torch.no_grad():
                self.query_tokens.copy_(tokens)
        else:
            missing.append(QUERY_TOKENS_KEY)
        loaded = sorted(set(state) - set(unexpected))
        logger = MMLogger.get_current_instance()
        logger.info(f'QFormerNeck: loaded {len(loaded)} tensors (qformer.*, query_tokens) from '
                    f'BLIP-2 checkpoint {path!r}: {loaded}')
        if missing:
            logger.warning(f'QFormerNeck: missing keys (kept random init): {missing}')
        if unexpected:
            logger.warning(f'QFormerNeck: unexpected keys in {path!r} (ignored): {unexpected}')

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
