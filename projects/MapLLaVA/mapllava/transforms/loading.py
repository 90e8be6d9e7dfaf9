"""Load the camera images and the vector-map GT of a sample."""
from __future__ import annotations

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS
from mmengine.fileio import get


class CorruptFileError(OSError):
    """A file a sample refers to exists but cannot be decoded: bad data, a user error.

    Raised in a DataLoader worker, it reaches the main process re-created by torch with the
    worker's traceback as its message; ``engine.cli.run_cli`` prints its last line.
    """


@TRANSFORMS.register_module()
class LoadMultiViewImages(BaseTransform):
    """Read ``results['img_path']`` (one per camera, dataset order) into ``results['img']``.

    mmdet3d's ``LoadMultiViewImageFromFiles`` re-derives the camera lists from
    ``results['images']`` and pads views to one shape; here the dataset's stacked calibration
    stays aligned with the images, and a missing or undecodable file names its path and the
    sample token (:class:`CorruptFileError` for the latter).

    Adds ``img`` (list of HxWx3 arrays, BGR), ``img_shape`` / ``ori_shape`` (list of (H, W)
    per view) and ``num_views``.
    """

    def __init__(self, to_float32: bool = False, color_type: str = 'color',
                 imdecode_backend: str = 'cv2', backend_args: dict | None = None) -> None:
        self.to_float32 = to_float32
        self.color_type = color_type
        self.imdecode_backend = imdecode_backend
        self.backend_args = backend_args

    def _read(self, path: str, token: str) -> np.ndarray:
        try:
            buf = get(path, backend_args=self.backend_args)
        except FileNotFoundError as e:
            raise FileNotFoundError(f'camera image not found: {path} (sample {token})') from e
        if not buf:
            raise CorruptFileError(f'cannot decode camera image {path} (sample {token}): '
                                   'empty file')
        try:
            img = mmcv.imfrombytes(buf, flag=self.color_type, backend=self.imdecode_backend)
        except Exception as e:  # the pillow / turbojpeg backends raise their own errors
            raise CorruptFileError(f'cannot decode camera image {path} (sample {token}): '
                                   f'{" ".join(str(e).split()) or type(e).__name__}') from e
        if img is None:  # cv2's answer to a truncated or garbled file
            raise CorruptFileError(f'cannot decode camera image {path} (sample {token}): '
                                   'truncated, or not an image')
        return img.astype(np.float32) if self.to_float32 else img

    def transform(self, results: dict) -> dict:
        token = results.get('token', results.get('sample_idx'))
        imgs = [self._read(p, token) for p in results['img_path']]
        results['img'] = imgs
        results['img_shape'] = [img.shape[:2] for img in imgs]
        results['ori_shape'] = [img.shape[:2] for img in imgs]
        results['num_views'] = len(imgs)
        return results


@TRANSFORMS.register_module()
class LoadMapAnnotations(BaseTransform):
    """Vector-map GT of the info into ``gt_map_vectors`` (list of (Ni, 2) float32, LiDAR frame),
    ``gt_map_labels`` (int64 (M,)) and ``gt_map_closed`` (bool (M,)).

    A sample without ``map_annos`` (nuScenes test split) raises unless ``allow_missing``,
    in which case it gets empty GT.
    """

    def __init__(self, allow_missing: bool = False) -> None:
        self.allow_missing = allow_missing

    def transform(self, results: dict) -> dict:
        annos = results.get('map_annos')
        if annos is None:
            if not self.allow_missing:
                raise KeyError(f'sample {results.get("token")} has no map_annos (test-split '
                               'infos carry no GT; use allow_missing=True or drop this step)')
            annos = dict(labels=np.zeros(0, np.int64), vectors=[], is_closed=np.zeros(0, bool))
        results['gt_map_vectors'] = [np.asarray(v, dtype=np.float32) for v in annos['vectors']]
        results['gt_map_labels'] = np.asarray(annos['labels'], dtype=np.int64)
        results['gt_map_closed'] = np.asarray(annos['is_closed'], dtype=bool)
        return results
