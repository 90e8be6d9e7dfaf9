"""Model components; importing this package registers them in mmdet3d's registries."""
from . import bev_encoder, detectors, heads, llm, necks, task_modules  # noqa: F401
from .strict_pretrained_init import StrictPretrainedInit

__all__ = ['StrictPretrainedInit']
