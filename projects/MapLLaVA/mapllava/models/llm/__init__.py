"""Bridges from scene tokens to map instance queries: through an LLM, or the no-LLM ablation."""
from .base_bridge import MapQueryBridge, build_projector
from .bypass_bridge import BypassBridge
from .llm_bridge import DEFAULT_LORA, DEFAULT_PROMPT, LLMBridge, build_causal_lm, byte_prompt_ids

__all__ = [
    'MapQueryBridge', 'build_projector', 'BypassBridge', 'LLMBridge', 'build_causal_lm',
    'byte_prompt_ids', 'DEFAULT_LORA', 'DEFAULT_PROMPT'
]
