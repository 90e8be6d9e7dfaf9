"""No-LLM ablation: the map queries read the scene tokens through a small transformer decoder."""
from mmdet3d.registry import MODELS
from torch import Tensor, nn

from .base_bridge import MapQueryBridge


@MODELS.register_module()
class BypassBridge(MapQueryBridge):
    """Same interface, shapes and parameter names as ``LLMBridge``, with the LLM replaced.

    ``transformer`` is a pre-norm ``nn.TransformerDecoder``: the map queries self-attend and
    cross-attend to the projected scene tokens. Its parameters are ``bridge.transformer.*``.

    Args:
        in_channels: Q-Former width of the scene tokens.
        embed_dims: output width (the map decoder's).
        num_map_queries: number of instance queries.
        width: fusion width (the LLM hidden size in ``LLMBridge``).
        num_layers, num_heads, ffn_dims, dropout: the decoder's shape.
        projector: ``'mlp'`` (LLaVA-1.5) or ``'linear'`` for ``scene_proj``.
    """

    def __init__(self,
                 in_channels: int,
                 embed_dims: int = 256,
                 num_map_queries: int = 50,
                 width: int = 256,
                 num_layers: int = 2,
                 num_heads: int = 8,
                 ffn_dims: int = 1024,
                 dropout: float = 0.1,
                 projector: str = 'mlp',
                 init_cfg: dict | None = None) -> None:
        super().__init__(in_channels, width, embed_dims, num_map_queries, projector,
                         init_cfg=init_cfg)
        layer = nn.TransformerDecoderLayer(width, num_heads, ffn_dims, dropout,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(width))

    def fuse(self, scene: Tensor, queries: Tensor) -> Tensor:
        return self.transformer(queries, scene)
