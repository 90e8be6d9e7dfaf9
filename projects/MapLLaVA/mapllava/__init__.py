"""MapLLaVA: online vectorized HD-map detection with an LLM in the loop (mmdet3d project).

Importing this package registers every component into mmdet3d's registries.
"""
from .utils import register_safe_globals

register_safe_globals()

from . import datasets, engine, evaluation, hooks, models, transforms, visualization  # noqa: E402,F401,I001
