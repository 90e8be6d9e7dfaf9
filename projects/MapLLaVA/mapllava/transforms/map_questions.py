"""Pick the questions (and answers) a sample is asked from its info's language targets."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS

MODES = ('sample', 'all')


@TRANSFORMS.register_module()
class LoadMapQuestions(BaseTransform):
    """``results['language']['qa']`` → ``questions`` / ``answers`` / ``qa_types`` lists, which
    ``PackMapInputs`` puts into the data sample's metainfo.

    ``mode='sample'`` (training) draws ``num_questions`` pairs at random (numpy's generator,
    which the train workers seed per epoch, so a resumed run draws the same pairs);
    ``mode='all'`` (evaluation) keeps every pair in order, so each one is answered and scored.
    The language targets come from ``tools/create_data.py`` (``datasets/map_qa.py``).

    Args:
        mode: ``'sample'`` or ``'all'``.
        num_questions: pairs per sample in ``'sample'`` mode.
        types: only these question types (default: all).
    """

    def __init__(self, mode: str = 'sample', num_questions: int = 1,
                 types: Sequence[str] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f'LoadMapQuestions: mode must be one of {MODES}, got {mode!r}')
        if num_questions < 1:
            raise ValueError(f'LoadMapQuestions: num_questions must be >= 1, got {num_questions}')
        self.mode = mode
        self.num_questions = int(num_questions)
        self.types = tuple(types) if types is not None else None

    def transform(self, results: dict) -> dict:
        language = results.get('language')
        if language is None:
            raise KeyError(
                f'sample {results.get("token")!r} has no language targets: rebuild the infos with '
                'tools/create_data.py, or add them to existing ones with '
                'tools/create_data.py ... --language-only')
        pairs = [qa for qa in language['qa'] if self.types is None or qa['type'] in self.types]
        if self.mode == 'sample' and pairs:
            picks = np.random.choice(len(pairs), min(self.num_questions, len(pairs)),
                                     replace=False)
            pairs = [pairs[int(i)] for i in sorted(picks)]
        results['questions'] = [qa['question'] for qa in pairs]
        results['answers'] = [qa['answer'] for qa in pairs]
        results['qa_types'] = [qa['type'] for qa in pairs]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(mode={self.mode!r}, '
                f'num_questions={self.num_questions}, types={self.types})')
