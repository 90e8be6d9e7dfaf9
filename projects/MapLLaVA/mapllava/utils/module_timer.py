"""Per-module forward time through forward hooks, for speed benchmarks.

On CUDA every hook records a ``torch.cuda.Event`` (no synchronisation in the hot path; the
spans are read after ``totals_ms`` synchronises), so a span is GPU stream time between the
module's entry and exit. On CPU the hooks read ``time.perf_counter``. Only forward calls
are seen: the backward pass of a module runs outside its hooks.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from functools import partial

import torch
from torch import nn


class ModuleTimer:
    """Sum the forward time of named modules and of ``span`` blocks.

    Args:
        modules: name -> module to time (each call of the module adds one span).
        cuda: time with CUDA events instead of ``perf_counter``.
    """

    def __init__(self, modules: dict[str, nn.Module], cuda: bool) -> None:
        self.cuda = cuda
        self._open: dict[str, list] = defaultdict(list)
        self._spans: dict[str, list] = defaultdict(list)
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(partial(self._enter, name)))
            self._handles.append(module.register_forward_hook(partial(self._exit, name)))

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _enter(self, name: str, *_) -> None:
        self._open[name].append(self._mark())

    def _exit(self, name: str, *_) -> None:
        self._spans[name].append((self._open[name].pop(), self._mark()))

    @contextlib.contextmanager
    def span(self, name: str):
        """Time a block of code under ``name``."""
        self._enter(name)
        try:
            yield
        finally:
            self._exit(name)

    def reset(self) -> None:
        self._spans.clear()

    def totals_ms(self) -> dict[str, float]:
        """Total milliseconds per name since the last ``reset``."""
        if self.cuda:
            torch.cuda.synchronize()
            elapsed = lambda start, end: start.elapsed_time(end)
        else:
            elapsed = lambda start, end: (end - start) * 1e3
        return {name: sum(elapsed(*s) for s in spans) for name, spans in self._spans.items()}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
