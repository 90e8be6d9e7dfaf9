"""What the LLM bridge and its no-LLM ablation share: projections and learnable map queries."""
import torch
from mmengine.model import BaseModule
from torch import Tensor, nn


def build_projector(kind: str, in_dims: int, out_dims: int) -> nn.Module:
    """``'linear'`` or LLaVA-1.5's ``'mlp'`` (Linear → GELU → Linear) projector."""
    if kind == 'linear':
        return nn.Linear(in_dims, out_dims)
    if kind == 'mlp':
        return nn.Sequential(nn.Linear(in_dims, out_dims), nn.GELU(), nn.Linear(out_dims, out_dims))
    raise ValueError(f"projector must be 'linear' or 'mlp', got {kind!r}")


class MapQueryBridge(BaseModule):
    """Scene tokens ``(B, T, in_channels)`` → instance queries ``(B, num_map_queries, embed_dims)``.

    ``scene_proj`` lifts the Q-Former tokens to the fusion width, ``map_queries`` (one learnable
    token per map instance, fusion width) read the scene inside ``fuse`` (implemented by the
    subclass: an LLM, or a small transformer), and ``out_proj`` maps their final states to the
    map decoder's width. Held as the detector's ``bridge``, the parameter names are
    ``bridge.scene_proj.*``, ``bridge.map_queries``, ``bridge.out_proj.*`` plus the subclass'
    fusion module, for ``paramwise_cfg.custom_keys``.
    """

    def __init__(self,
                 in_channels: int,
                 width: int,
                 embed_dims: int,
                 num_map_queries: int,
                 projector: str = 'mlp',
                 query_std: float = 0.02,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        self.in_channels = in_channels
        self.width = width
        self.embed_dims = embed_dims
        self.num_map_queries = num_map_queries
        self.scene_proj = build_projector(projector, in_channels, width)
        self.map_queries = nn.Parameter(torch.randn(num_map_queries, width) * query_std)
        self.out_proj = nn.Linear(width, embed_dims)

    def fuse(self, scene: Tensor, queries: Tensor) -> Tensor:
        """``scene (B, T, width)``, ``queries (B, Q, width)`` → query states ``(B, Q, width)``."""
        raise NotImplementedError

    def forward(self, scene_tokens: Tensor) -> Tensor:
        """``(B, T, in_channels)`` → ``(B, num_map_queries, embed_dims)``."""
        scene = self.scene_proj(scene_tokens)
        queries = self.map_queries.unsqueeze(0).expand(scene.shape[0], -1, -1)
        states = self.fuse(scene, queries)
        return self.out_proj(states.to(self.out_proj.weight.dtype))
