"""Turn a sharded checkpoint folder (``FSDP2Strategy``) into one lean ``.pth``, in one process.

    python tools/export_checkpoint.py work_dirs/X/checkpoint_epoch_3.pth work_dirs/X/epoch_3.pth

The output holds what ``MapRunner`` writes to ``best_model.pth``: ``state_dict`` (trained
weights and buffers; never the frozen LLM weights reloaded from ``llm_path``), ``meta`` and
``message_hub``, so ``tools/test.py`` and ``load_from`` read it without GPUs or the number of
processes that trained it. Only the model tensors are read, not the AdamW state. A sharded
run writes ``best_model.pth`` and ``final_model.pth`` like this itself; this tool exports
any other epoch.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from typing import Sequence

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from projects.MapLLaVA.mapllava.engine import cli  # noqa: E402
from projects.MapLLaVA.mapllava.engine.config_checks import ConfigCheckError  # noqa: E402
from projects.MapLLaVA.mapllava.engine.sharded_checkpoint import (  # noqa: E402
    export_consolidated,
    is_sharded_checkpoint,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a sharded checkpoint as one .pth')
    parser.add_argument('checkpoint', help='sharded checkpoint folder (checkpoint_epoch_N.pth/)')
    parser.add_argument('out', help='the .pth to write (replaced atomically)')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not is_sharded_checkpoint(args.checkpoint):
        raise ConfigCheckError(f'{args.checkpoint} is not a sharded checkpoint folder (no '
                               '.metadata inside); single-file checkpoints need no export')
    if osp.abspath(args.out) == osp.abspath(args.checkpoint):
        raise ConfigCheckError(f'the output {args.out} would replace the sharded checkpoint')
    checkpoint = export_consolidated(args.checkpoint, args.out)
    meta, state = checkpoint['meta'], checkpoint['state_dict']
    numel = sum(v.numel() for v in state.values())
    print(f'{args.out}: {len(state)} tensors, {numel / 1e6:.1f} M values '
          f'(epoch {meta.get("epoch")}, iter {meta.get("iter")})')


if __name__ == '__main__':
    cli.run_cli(main)
