"""Answer distribution of the map questions and the majority-answer baseline.

    python tools/analysis_tools/qa_stats.py data/nuscenes/nuscenes_map_infos_train.pkl \
        data/nuscenes/nuscenes_map_infos_val.pkl

Prints, per question type, how often each GT answer occurs on both splits, then the scores
(``MapQAMetric``'s keys and table) of answering every validation question with the train
split's majority answer (median for distances): the number a model has to beat. The infos
need language targets (``tools/create_data.py ... --language-only`` adds them).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from projects.MapLLaVA.mapllava.evaluation.map_qa_metric import (  # noqa: E402
    answer_histogram,
    majority_baseline,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('train_file', help='info .pkl the majority answers are taken from')
    parser.add_argument('val_file', help='info .pkl the baseline is scored on')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    for name, path in (('train', args.train_file), ('val', args.val_file)):
        print(f'{name}: {path}')
        for qtype, counts in answer_histogram(path).items():
            total = sum(counts.values())
            top = ', '.join(f'{a!r}: {n}' for a, n in counts.most_common())
            print(f'  {qtype} ({total}): {top}')
    metrics, answers = majority_baseline(args.train_file, args.val_file)
    print('majority answers (train): ' + ', '.join(f'{t}={a!r}' for t, a in answers.items()))
    for key, value in metrics.items():
        print(f'  {key}: {value:.4f}')
    return metrics


if __name__ == '__main__':
    main()
