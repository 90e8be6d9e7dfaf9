"""Text ↔ token ids for the LLM bridge: a Hugging Face tokenizer, or bytes for config-built LLMs.

An LLM built from a config dict (tests, benchmarks) has no tokenizer. ``ByteCodec`` turns text
into its UTF-8 bytes instead, so a random-weight LLM always sees the same ids and can still be
taught to answer. The question/answer layout the bridge trains on is built by :func:`encode_qa`.
"""
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

IGNORE_INDEX = -100  # label of a position that is not scored (PyTorch's cross-entropy default)
# bytes that text written by people contains: printable ASCII, \t \n \r, and every byte of a
# multi-byte UTF-8 character
TEXT_BYTES = frozenset([9, 10, 13, *range(32, 127), *range(128, 256)])
RESERVED_EOS = 256  # the byte codec's EOS when the LLM config's own one is a text byte


def byte_prompt_ids(prompt: str, vocab_size: int, bos_token_id: int | None) -> list[int]:
    """Tokenizer-free prompt ids for config-built LLMs: BOS, then each UTF-8 byte mod vocab.

    Deterministic, so a random-weight LLM always sees the same prompt tokens.
    """
    ids = [b % vocab_size for b in prompt.encode('utf-8')]
    return ([bos_token_id] if bos_token_id is not None else []) + ids


class TextCodec(Protocol):
    """What the bridge needs from a tokenizer."""

    eos_token_id: int

    def prompt_ids(self, prompt: str) -> list[int]:
        """The instruction's ids, with the special tokens the LLM expects at the start."""

    def encode(self, text: str) -> list[int]:
        """Ids of a piece of text in the middle of a sequence (no special tokens)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids (special tokens dropped)."""


class ByteCodec:
    """One id per UTF-8 byte (``byte_prompt_ids``' mapping), for LLMs without a tokenizer.

    The prompt keeps ``byte_prompt_ids`` exactly (BOS + bytes mod vocab), so the map path of a
    config-built LLM does not change. Question and answer text need ``vocab_size >= 256`` so
    that every byte has its own id and ``decode(encode(text)) == text``.

    EOS is the LLM config's ``eos_token_id`` when it cannot occur in text (Llama's default 2
    is the control byte STX); if it is missing or a text byte (``TEXT_BYTES``), the reserved
    id 256 (``RESERVED_EOS``) ends answers instead, which needs ``vocab_size > 256``.
    """

    def __init__(self, vocab_size: int, bos_token_id: int | None,
                 eos_token_id: int | Sequence[int] | None) -> None:
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        if isinstance(eos_token_id, Sequence):
            eos_token_id = eos_token_id[0] if eos_token_id else None
        if eos_token_id is None or eos_token_id in TEXT_BYTES or not (
                0 <= eos_token_id < vocab_size):
            eos_token_id = RESERVED_EOS if vocab_size > RESERVED_EOS else None
        self._eos_token_id = eos_token_id

    @property
    def eos_token_id(self) -> int:
        if self._eos_token_id is None:
            raise ValueError('the byte codec needs an LLM config eos_token_id outside the text '
                             f'bytes, or vocab_size > {RESERVED_EOS} for a reserved one; got '
                             f'vocab_size={self.vocab_size}')
        return self._eos_token_id

    def prompt_ids(self, prompt: str) -> list[int]:
        return byte_prompt_ids(prompt, self.vocab_size, self.bos_token_id)

    def encode(self, text: str) -> list[int]:
        if self.vocab_size < 256:
            raise ValueError('the byte codec encodes question/answer text only for an LLM with '
                             f'vocab_size >= 256 (one id per byte), got {self.vocab_size}')
        return list(text.encode('utf-8'))

    def decode(self, ids: Sequence[int]) -> str:
        """EOS is dropped; an id that is no byte reads as U+FFFD (visible, not lost)."""
        ids = [i for i in ids if i != self._eos_token_id]
        pieces, start = [], 0
        for end, i in enumerate(ids + [256]):
            if i >= 256:
                pieces.append(bytes(ids[start:end]).decode('utf-8', errors='replace'))
                pieces.append('\ufffd' if end < len(ids) else '')
                start = end + 1
        return ''.join(pieces)


class TokenizerCodec:
    """A Hugging Face tokenizer (``AutoTokenizer``) as the bridge's codec."""

    def __init__(self, tokenizer, path: str, llm_eos_token_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else llm_eos_token_id
        if isinstance(eos, Sequence):
            eos = eos[0] if eos else None
        self._eos_token_id = eos
        self.path = path

    @property
    def eos_token_id(self) -> int:
        if self._eos_token_id is None:
            raise ValueError(f'tokenizer {self.path!r} has no eos_token and the LLM config no '
                             'eos_token_id: answers need one to end')
        return self._eos_token_id

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)['input_ids']

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)['input_ids']

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


class QABatch(NamedTuple):
    """Right-padded ``[question, answer, EOS]`` ids ``(B, L)`` and their next-token labels.

    ``labels[b, t]`` is the id at ``t`` where ``t`` is an answer (or its EOS) position and
    ``IGNORE_INDEX`` on question and padding positions; the hidden state at ``t - 1`` predicts
    it.
    """
    input_ids: Tensor
    labels: Tensor


def encode_qa(codec: TextCodec,
              questions: Sequence[str | None],
              answers: Sequence[str | None],
              question_template: str = '{question}',
              max_answer_tokens: int | None = None,
              device: torch.device | str | None = None) -> QABatch:
    """One (question, answer) pair per sample → :class:`QABatch`.

    A sample whose question is ``None`` has no text (all padding, nothing scored). An answer
    longer than ``max_answer_tokens`` ids, the EOS that ends it included, is an error.
    """
    if len(questions) != len(answers):
        raise ValueError(f'got {len(questions)} questions but {len(answers)} answers')
    if max_answer_tokens is not None and max_answer_tokens < 1:
        raise ValueError(f'max_answer_tokens must be >= 1 (the EOS), got {max_answer_tokens}')
    eos = codec.eos_token_id
    rows = []
    for question, answer in zip(questions, answers):
        if question is None:
            rows.append(([], []))
            continue
        if answer is None:
            raise ValueError(f'question {question!r} has no answer')
        q_ids = codec.encode(question_template.format(question=question))
        if not q_ids:  # the first answer id is predicted from the last question position
            raise ValueError(f'question {question!r} with template {question_template!r} '
                             'encodes to no tokens')
        a_ids = codec.encode(answer) + [eos]
        if max_answer_tokens is not None and len(a_ids) > max_answer_tokens:
            # cut, it would train an answer the model can then never give in full
            raise ValueError(f'answer {answer!r} to {question!r} is {len(a_ids)} tokens with '
                             f'the EOS, more than max_answer_tokens={max_answer_tokens} '
                             '(model.bridge.max_answer_tokens)')
        rows.append((q_ids + a_ids, [IGNORE_INDEX] * len(q_ids) + a_ids))
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), eos, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for b, (ids, lab) in enumerate(rows):
        input_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[b, :len(lab)] = torch.tensor(lab, dtype=torch.long)
    return QABatch(input_ids.to(device), labels.to(device))
