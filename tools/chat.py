"""Ask a MapLLaVA checkpoint about the map of one sample, from the terminal.

    python tools/chat.py CONFIG CHECKPOINT [--token T] [--question Q] [--save-bev bev.png]

Without ``--question`` it reads questions from stdin, one a line (``/token T`` switches the
sample, ``/samples`` lists them, ``/quit`` or end of input stops). The default sample is the
first of the split. A model whose bridge has no language path says so instead of answering
(exit status 2 with ``--question``); its predicted map is still summarised and drawn.
"""
import argparse
import os
import os.path as osp
import sys
from collections import Counter

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:  # custom_imports of projects.MapLLaVA work from any cwd
    sys.path.insert(0, REPO_ROOT)

from mmengine.config import DictAction  # noqa: E402

from projects.MapLLaVA.mapllava.apis import (  # noqa: E402
    InputError,
    MapInferencer,
    NoLanguagePathError,
)
from projects.MapLLaVA.mapllava.apis.sample_pictures import bev_png  # noqa: E402
from projects.MapLLaVA.mapllava.engine import cli  # noqa: E402
from projects.MapLLaVA.mapllava.engine.runner_conventions import atomic_write  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Ask a MapLLaVA model about a sample')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file (.pth)')
    parser.add_argument('--token', help='sample token (default: the first of the split)')
    parser.add_argument('--question', '-q', help='ask this once and exit')
    parser.add_argument('--save-bev', metavar='PATH',
                        help='write the BEV picture of the prediction (over the GT) here')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='summarise and draw predictions scoring at least this')
    parser.add_argument('--split', choices=['val', 'test'], default='val')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, key=value (as tools/test.py)')
    return parser.parse_args(argv)


def summary(result: dict, score_thr: float) -> str:
    counts = Counter(result['label_names'])
    kinds = ', '.join(f'{name} {n}' for name, n in sorted(counts.items())) or 'nothing'
    return (f'sample {result["token"]}: {len(result["vectors"])} map elements scoring >= '
            f'{score_thr:g} ({kinds})')


def ask(inferencer: MapInferencer, token: str, question: str, score_thr: float) -> bool:
    """Print the map summary and the answer; False when the model cannot answer."""
    try:
        result = inferencer.predict(token=token, questions=[question], score_thr=score_thr)
    except NoLanguagePathError as err:
        print(summary(err.result, score_thr))
        print(f'error: {err}', file=sys.stderr, flush=True)
        return False
    print(summary(result, score_thr))
    for qa in result['answers']:
        print(f'answer: {qa["answer"]}', flush=True)
    return True


def interact(inferencer: MapInferencer, token: str, score_thr: float, lines) -> None:
    print(f'{summary(inferencer.predict(token=token, score_thr=score_thr), score_thr)}\n'
          'ask a question (/token T, /samples, /quit)', flush=True)
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line in ('/quit', '/exit'):
            break
        if line == '/samples':
            print('\n'.join(inferencer.tokens), flush=True)
        elif line.startswith('/token'):
            new = line[len('/token'):].strip()
            try:
                inferencer.index(new)
            except InputError as err:
                print(f'error: {err}', file=sys.stderr, flush=True)
                continue
            token = new
            print(summary(inferencer.predict(token=token, score_thr=score_thr), score_thr),
                  flush=True)
        else:
            ask(inferencer, token, line, score_thr)


def main(argv=None, stdin=None) -> None:
    args = parse_args(argv)
    inferencer = MapInferencer(args.config, args.checkpoint, split=args.split,
                               device=args.device, cfg_options=args.cfg_options)
    try:
        if args.token is None and not inferencer.tokens:
            raise InputError('token', f'the {args.split} split has no samples')
        token = args.token if args.token is not None else inferencer.tokens[0]
        inferencer.index(token)
        if args.save_bev:
            os.makedirs(osp.dirname(osp.abspath(args.save_bev)), exist_ok=True)
            png = bev_png(inferencer.predict_sample(token), inferencer.classes,
                          inferencer.roi_size, args.score_thr)
            atomic_write(args.save_bev, png)
            print(f'BEV written to {args.save_bev}')
        if args.question is not None:
            if not ask(inferencer, token, args.question, args.score_thr):
                sys.exit(2)
        else:
            interact(inferencer, token, args.score_thr, stdin or sys.stdin)
    except InputError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    cli.run_cli(main)
