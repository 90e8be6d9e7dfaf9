"""BLIP-2 Q-Former over the scene (BEV map, camera images, LiDAR BEV): a fixed number of
scene tokens for the LLM bridge."""
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from mmdet.models.layers import SinePositionalEncoding
from mmdet3d.registry import MODELS
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch import Tensor, nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from ..bev_encoder.grid import DEFAULT_PC_RANGE
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
from .modalities import encoder_output, resolve_modalities
from .ray_encoding import RayPositionEncoding, viewing_rays

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


def _grid_downsample(opts: dict) -> nn.Module:
    """Stride-``downsample`` reduction of a BEV-grid map before it is flattened."""
    stride, channels = int(opts['downsample']), opts['in_channels']
    if stride == 1:
        return nn.Identity()
    if opts['mode'] == 'avg':
        return nn.AvgPool2d(stride, ceil_mode=True)
    return nn.Conv2d(channels, channels, stride, stride)


def _token_proj(in_channels: int, memory_dims: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_channels, memory_dims), nn.LayerNorm(memory_dims))


@MODELS.register_module()
class QFormerNeck(BaseModule):
    """BLIP-2 Q-Former: scene features → ``(B, num_query_tokens, hidden_size)`` scene tokens.

    The Q-Former's cross-attention memory (``encoder_hidden_states``) holds the tokens of
    every switched-on modality (``modalities``, in the order image, bev, lidar):

    - ``bev`` / ``lidar`` (a BEV-grid map ``(B, C, H, W)``): optional stride-``downsample``
      reduction → flatten → Linear + LayerNorm to ``encoder_hidden_size`` → + 2-D sine
      positional encoding (normalised DETR-style, mmdet's ``SinePositionalEncoding``:
      size-agnostic, and added after the LayerNorm so its scale is fixed relative to the
      features whatever the encoder's output range is). ``bev.source='output'`` reads the map
      the map head reads (the fused one when there is LiDAR), ``'camera'`` the camera branch's
      map before fusion.
    - ``image`` (the image neck's ``(B, N, C, fH, fW)`` features of every camera): adaptive
      average pooling to ``pool_size`` or ``ceil(f / downsample)`` cells per camera → Linear +
      LayerNorm → + the encoding of each token's viewing ray (``RayPositionEncoding``: camera
      centre and direction in the LiDAR frame, from the calibration the view transform uses)
      → + a learnable per-camera embedding.

    With more than one modality a learnable modality embedding is added to its tokens.
    Token budget (memory length): ``Σ cells`` after the per-modality reduction, e.g. at full
    size 6 × 15 × 25 image tokens (800×480 padded inputs, stride 16, ``downsample=2``) and
    100 × 50 BEV tokens.

    ``modalities=None`` is the BEV-only neck with the layer names of earlier versions
    (``bev_downsample``, ``bev_proj``), so its checkpoints load unchanged.

    Args:
        in_channels: channels of the ``bev`` modality (default of ``modalities.bev``).
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
        downsample: BEV stride before flattening (default of ``modalities.bev``; 1 = none).
            200×100 cells are 20k memory tokens; 2 gives 5k.
        downsample_mode: ``'avg'`` (parameter-free average pooling) or ``'conv'`` (strided
            conv); default of ``modalities.bev``.
        modalities: ``dict(image=..., bev=..., lidar=...)``, each ``True``/``False``/``None``
            or a dict of options (``modalities.py``: ``in_channels``, ``downsample``, ``mode``;
            ``bev.source``; ``image.pool_size``, ``image.num_cams``, ``image.pc_range``).
            Inside ``MapLLaVA`` the channels and ``pc_range`` come from the BEV encoder, and a
            modality the encoder cannot produce (LiDAR without a LiDAR branch) fails the
            build.
        gradient_checkpointing: recompute the Q-Former layers in backward (transformers'
            non-reentrant activation checkpointing; training only).
    """

    def __init__(self,
                 in_channels: int | None = None,
                 qformer_cfg: dict | None = None,
                 num_query_tokens: int | None = None,
                 pretrained: str | None = None,
                 downsample: int = 1,
                 downsample_mode: str = 'avg',
                 modalities: dict | None = None,
                 gradient_checkpointing: bool = False,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        self.modalities = resolve_modalities(
            modalities, dict(in_channels=in_channels, downsample=downsample,
                             mode=downsample_mode))
        for name, opts in self.modalities.items():
            if opts['in_channels'] is None:
                raise ValueError(f'neck.modalities.{name}.in_channels is not set (MapLLaVA '
                                 'fills it from the BEV encoder; set it for a neck built '
                                 'alone)')
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
        self.memory_dims = memory_dims

        # creation order (and so the random init) of the BEV-only neck is that of before
        if 'image' in self.modalities:
            opts = self.modalities['image']
            self.image_proj = _token_proj(opts['in_channels'], memory_dims)
            self.image_ray_pe = RayPositionEncoding(memory_dims,
                                                    opts['pc_range'] or DEFAULT_PC_RANGE)
            self.camera_embed = nn.Parameter(torch.randn(opts['num_cams'], memory_dims) * 0.02)
        for name in ('bev', 'lidar'):
            if name in self.modalities:
                opts = self.modalities[name]
                setattr(self, f'{name}_downsample', _grid_downsample(opts))
                setattr(self, f'{name}_proj', _token_proj(opts['in_channels'], memory_dims))
        if 'bev' in self.modalities or 'lidar' in self.modalities:
            self.bev_pos = SinePositionalEncoding(memory_dims // 2, normalize=True)
        self.modality_embed = None
        if len(self.modalities) > 1:
            self.modality_embed = nn.ParameterDict({
                name: nn.Parameter(torch.randn(memory_dims) * 0.02) for name in self.modalities})
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(
            torch.randn(1, self.num_query_tokens, hidden) * config.initializer_range)
        if state is not None:
            self._load_pretrained(state, pretrained)
        if gradient_checkpointing:
            enable_activation_checkpointing(self.qformer)

    @property
    def encoder_outputs(self) -> dict[str, str]:
        """``{modality: BEVFusionEncoder.encode key}`` this neck reads."""
        return {name: encoder_output(name, opts) for name, opts in self.modalities.items()}

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

    def forward(self, feats: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
                data_samples: Sequence | None = None) -> Tensor:
        """Scene features → ``(B, num_query_tokens, hidden)``.

        ``feats``: ``BEVFusionEncoder.encode``'s dict (every modality), or, for a BEV-only
        neck, the ``(B, C, H, W)`` BEV map itself (or a one-element list). The ``image``
        modality also needs ``feats['img_hw']`` and the ``data_samples`` (calibration).
        """
        if not isinstance(feats, Mapping):
            if isinstance(feats, (list, tuple)):
                if len(feats) != 1:
                    raise ValueError(f'QFormerNeck takes one BEV map, got {len(feats)}')
                feats = feats[0]
            if list(self.modalities) != ['bev']:
                raise ValueError(f'this neck reads {list(self.modalities)}: pass the dict of '
                                 'BEVFusionEncoder.encode, not one tensor')
            feats = {self.encoder_outputs['bev']: feats}
        memory = []
        for name, key in self.encoder_outputs.items():
            if key not in feats:
                raise KeyError(f'neck modality {name!r} reads encoder output {key!r}, which '
                               f'is not among {sorted(feats)}')
            if name == 'image':
                tokens = self._image_tokens(feats[key], feats.get('img_hw'), data_samples)
            else:
                tokens = self._grid_tokens(name, feats[key])
            if self.modality_embed is not None:
                tokens = tokens + self.modality_embed[name].to(tokens.dtype)
            memory.append(tokens)
        memory = memory[0] if len(memory) == 1 else torch.cat(memory, dim=1)
        queries = self.query_tokens.expand(memory.shape[0], -1, -1)
        return self.qformer(query_embeds=queries, encoder_hidden_states=memory).last_hidden_state

    def _grid_tokens(self, name: str, grid: Tensor) -> Tensor:
        """``(B, C, H, W)`` BEV-grid map → ``(B, h·w, memory_dims)`` tokens (+ sine encoding)."""
        grid = getattr(self, f'{name}_downsample')(grid)
        _, _, height, width = grid.shape
        tokens = getattr(self, f'{name}_proj')(grid.flatten(2).transpose(1, 2))
        pos = self.bev_pos(grid.new_zeros((1, height, width), dtype=torch.bool))
        return tokens + pos.flatten(2).transpose(1, 2).to(tokens.dtype)

    def token_grid(self, feat_hw: Sequence[int]) -> tuple[int, int]:
        """Image tokens per camera ``(rows, cols)`` for a ``feat_hw`` feature map."""
        opts = self.modalities['image']
        if opts['pool_size'] is not None:
            return int(opts['pool_size'][0]), int(opts['pool_size'][1])
        stride = int(opts['downsample'])
        return -(-int(feat_hw[0]) // stride), -(-int(feat_hw[1]) // stride)

    def _image_tokens(self, img_feats: Tensor, img_hw: Sequence[int] | None,
                      data_samples: Sequence | None) -> Tensor:
        """``(B, N, C, fH, fW)`` → ``(B, N·rows·cols, memory_dims)`` tokens, camera-major."""
        if img_hw is None or data_samples is None:
            raise ValueError("the image modality needs feats['img_hw'] and the data samples "
                             '(camera calibration) to place its tokens')
        batch, num_cams = img_feats.shape[:2]
        if num_cams > self.camera_embed.shape[0]:
            raise ValueError(f'{num_cams} cameras, but neck.modalities.image.num_cams is '
                             f'{self.camera_embed.shape[0]}')
        grid_hw = self.token_grid(img_feats.shape[-2:])
        x = img_feats.flatten(0, 1)
        if tuple(x.shape[-2:]) != grid_hw:
            x = F.adaptive_avg_pool2d(x, grid_hw)
        tokens = self.image_proj(x.flatten(2).transpose(1, 2))
        tokens = tokens.view(batch, num_cams, grid_hw[0] * grid_hw[1], -1)
        origins, directions = viewing_rays(data_samples, img_hw, grid_hw, tokens.device)
        pos = self.image_ray_pe(origins, directions).flatten(2, 3)
        tokens = tokens + pos.to(tokens.dtype) + self.camera_embed[:num_cams, None].to(
            tokens.dtype)
        return tokens.flatten(1, 2)
