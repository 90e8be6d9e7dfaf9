"""Can the map answers be read linearly from the scene tokens? (beside the LLM and the baseline)

    python tools/analysis_tools/probe_scene_tokens.py CONFIG CHECKPOINT [--out probe.json]

Runs the checkpoint's BEV encoder and Q-Former over the train and val samples of the config
(its val pipeline on both, so no augmentation), fits a ridge read-out of every question type
on the train split's flattened scene tokens (``evaluation/scene_probe.py``) and scores its
answers to the val questions with ``MapQAMetric``'s scoring, beside the majority baseline
(``read-out``: with the train answer frequencies as its prior; ``balanced``: without, see
``probe_answers``).
A type the read-out answers well but the LLM does not is one the tokens hold and the LLM has
not learned to read; a type neither beats is lost before the LLM.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import numpy as np  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from projects.MapLLaVA.mapllava.apis import MapInferencer  # noqa: E402
from projects.MapLLaVA.mapllava.engine import cli  # noqa: E402
from projects.MapLLaVA.mapllava.engine.config_checks import ConfigCheckError  # noqa: E402
from projects.MapLLaVA.mapllava.engine.runner_conventions import atomic_write  # noqa: E402
from projects.MapLLaVA.mapllava.evaluation import (  # noqa: E402
    evaluate_qa_predictions,
    majority_baseline,
)
from projects.MapLLaVA.mapllava.evaluation.scene_probe import (  # noqa: E402
    DEFAULT_RIDGES,
    probe_answers,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--ridges', type=float, nargs='+', default=list(DEFAULT_RIDGES),
                        help='ridge strengths tried per type (x the kernel mean diagonal); '
                             'leave-one-scene-out on train picks one')
    parser.add_argument('--out', help='write the metrics (read-out and baseline) as JSON')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    return parser.parse_args(argv)


def split_file(dataset_cfg: dict, split: str) -> tuple[str, str]:
    """``(data_root, ann_file path)`` of a dataloader's dataset config."""
    if not isinstance(dataset_cfg, dict) or not dataset_cfg.get('ann_file'):
        raise ConfigCheckError(f'{split}_dataloader.dataset has no ann_file (a wrapped '
                               'dataset is not supported here)')
    root = dataset_cfg.get('data_root') or ''
    return root, osp.join(root, dataset_cfg['ann_file'])


def split_features(inferencer: MapInferencer
                   ) -> tuple[np.ndarray, list[dict], list[str], list[str]]:
    """Flattened scene tokens, GT questions (type -> question), tokens and scene tokens of a
    split."""
    feats, questions, scenes = [], [], []
    for token in inferencer.tokens:
        feats.append(inferencer.scene_tokens(token).reshape(-1))
        info = inferencer.data_info(token)
        language = info.get('language') or {}
        questions.append({qa['type']: qa for qa in language.get('qa', [])})
        scenes.append(str(info.get('scene_token', token)))
    if not any(questions):
        raise ConfigCheckError(f'{inferencer.dataset.ann_file}: no sample has language targets '
                               '(tools/create_data.py ... --language-only adds them)')
    return np.stack(feats), questions, list(inferencer.tokens), scenes


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    cfg = cli.load_config(args.config, args.cfg_options, 'none', None)
    train_root, train_file = split_file(cfg.train_dataloader.get('dataset'), 'train')
    _, val_file = split_file(cfg.val_dataloader.get('dataset'), 'val')
    val = MapInferencer(cfg, args.checkpoint)
    # the train samples through the val pipeline: same loading, no augmentation
    train = MapInferencer(cfg, args.checkpoint, cfg_options={
        'val_dataloader.dataset.data_root': train_root,
        'val_dataloader.dataset.ann_file': cfg.train_dataloader.dataset.ann_file})
    train_x, train_qa, _, train_scenes = split_features(train)
    val_x, val_qa, val_tokens, _ = split_features(val)
    print(f'scene tokens: {val_x.shape[1]} features; train {len(train_x)} samples '
          f'({train_file}), val {len(val_x)} ({val_file})')
    out = dict(baseline=majority_baseline(train_file, val_file, logger='silent')[0])
    for name, balanced in (('readout', False), ('balanced', True)):
        results, ridges = probe_answers(train_x, train_qa, val_x, val_qa, val_tokens,
                                        args.ridges, train_scenes, balanced)
        print(f'{name}: ridge chosen by leave-one-scene-out: ' +
              ', '.join(f'{t}={lam:.3g}' for t, lam in ridges.items()))
        out[name] = evaluate_qa_predictions(results, val_file, logger='silent')[0]
    print(f'{"metric":32s} {"baseline":>9s} {"read-out":>9s} {"balanced":>9s}')
    for key in (k for k in out['readout'] if not k.startswith('parsed_')):
        print(f'{key:32s} ' + ' '.join(f'{out[n].get(key, float("nan")):9.4f}'
                                       for n in ('baseline', 'readout', 'balanced')))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        atomic_write(args.out, json.dumps(out, indent=1).encode())
    return out


if __name__ == '__main__':
    cli.run_cli(main)
