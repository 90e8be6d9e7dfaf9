"""Serve a MapLLaVA checkpoint over HTTP: a JSON API and a web viewer at ``/``.

    python tools/serve.py CONFIG CHECKPOINT [--host 127.0.0.1] [--port 8000] [--split val]

``GET /samples``, ``GET /sample/{token}``, ``POST /predict``, ``GET /sample/{token}/bev.png``,
``GET /sample/{token}/cam/{i}.png``; the schema is in docs/serving.md (and at ``/docs``).
``create_app(inferencer)`` builds the app without starting a server (tests use it with
FastAPI's ``TestClient``).
"""
import argparse
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:  # custom_imports of projects.MapLLaVA work from any cwd
    sys.path.insert(0, REPO_ROOT)

from mmengine.config import DictAction  # noqa: E402

from projects.MapLLaVA.mapllava.apis import MapInferencer  # noqa: E402
from projects.MapLLaVA.mapllava.apis.http_app import create_app  # noqa: E402
from projects.MapLLaVA.mapllava.engine import cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Serve a MapLLaVA model over HTTP')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file (.pth)')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (0.0.0.0: every interface)')
    parser.add_argument('--port', type=int, default=8000)
    parser.add_argument('--split', choices=['val', 'test'], default='val',
                        help='dataloader whose samples /samples lists')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1' ...")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, key=value (as tools/test.py)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import uvicorn

    inferencer = MapInferencer(args.config, args.checkpoint, split=args.split,
                               device=args.device, cfg_options=args.cfg_options)
    print(f'serving {len(inferencer.tokens)} {args.split} samples at '
          f'http://{args.host}:{args.port}/', flush=True)
    uvicorn.run(create_app(inferencer), host=args.host, port=args.port, log_level='warning')


if __name__ == '__main__':
    cli.run_cli(main)
