"""bf16 mixed precision as mmengine's ``AmpOptimWrapper`` runs it, for CPU tests."""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.runner.amp import autocast


class CPUBF16OptimWrapper(OptimWrapper):
    """``AmpOptimWrapper.optim_context`` (``autocast(dtype=bfloat16)`` around the forward and
    the losses) on CPU, where mmengine refuses to build ``AmpOptimWrapper``. bf16 needs no
    loss scaling, so the rest is the plain wrapper."""

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), autocast(device_type='cpu', dtype=torch.bfloat16):
            yield


def cpu_optim_wrapper_cfg(optim_cfg: dict) -> dict:
    """A config's ``optim_wrapper`` made buildable on CPU: ``AmpOptimWrapper`` (bf16) becomes
    :class:`CPUBF16OptimWrapper`; anything else is returned unchanged."""
    optim_cfg = dict(optim_cfg)
    if optim_cfg.get('type') == 'AmpOptimWrapper' and not torch.cuda.is_available():
        assert optim_cfg.pop('dtype', None) == 'bfloat16', 'the project trains in bf16'
        optim_cfg.pop('loss_scale', None)
        optim_cfg['type'] = CPUBF16OptimWrapper
    return optim_cfg
