"""Bridges from scene tokens to map instance queries: through an LLM, or the no-LLM ablation."""
from .base_bridge import MapQueryBridge, build_projector
from .bypass_bridge import BypassBridge
from .llm_bridge import (
    DEFAULT_LORA,
    DEFAULT_PROMPT,
    DEFAULT_QUESTION_TEMPLATE,
    LLMBridge,
    build_causal_lm,
)
from .text_codec import IGNORE_INDEX, ByteCodec, QABatch, TokenizerCodec, byte_prompt_ids, encode_qa

__all__ = [
    'MapQueryBridge', 'build_projector', 'BypassBridge', 'LLMBridge', 'build_causal_lm',
    'byte_prompt_ids', 'DEFAULT_LORA', 'DEFAULT_PROMPT', 'DEFAULT_QUESTION_TEMPLATE',
    'ByteCodec', 'TokenizerCodec', 'QABatch', 'encode_qa', 'IGNORE_INDEX'
]
