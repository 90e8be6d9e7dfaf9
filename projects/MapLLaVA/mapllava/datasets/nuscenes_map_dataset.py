"""nuScenes vector-map dataset over the info files of ``tools/create_data.py``."""
from __future__ import annotations

import os.path as osp
from collections.abc import Sequence

import numpy as np
from mmdet3d.registry import DATASETS
from mmengine.dataset import BaseDataset
from mmengine.logging import print_log

from ..utils.safe_pickle import load_data_file
from .map_gt.info_builder import INFO_VERSION
from .map_gt.vectorized_local_map import MAP_CLASSES


def _pad4(mat: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:mat.shape[0], :mat.shape[1]] = mat
    return out


@DATASETS.register_module()
class NuScenesMapDataset(BaseDataset):
    """Multi-view camera (and optional LiDAR) samples with vector-map GT.

    Built on mmengine's ``BaseDataset`` rather than ``Det3DDataset``: there are no 3D boxes,
    and no sample is ever filtered out (a sample without map elements in the ROI is a valid,
    empty target), whatever ``filter_cfg`` says.

    ``metainfo['classes']`` selects the classes: info labels are remapped by class *name*, so
    infos built ``--with-centerline`` serve 3-class and 4-class configs alike.

    Info keys not named here reach the pipeline unchanged, e.g. ``language`` (the map
    questions of ``datasets/map_qa.py``; absent in infos written before them).

    Args:
        ann_file: info ``.pkl`` or ``.json`` (relative to ``data_root`` or absolute); a
            ``.pkl`` naming any global but builtins and numpy arrays is refused.
        data_prefix: folders joined before the info's relative paths: ``img`` (camera
            images), ``pts`` (LiDAR), ``sweeps``; each is relative to ``data_root``.
        **kwargs: the rest of ``BaseDataset``'s arguments (``pipeline``, ``test_mode``, ...).
    """

    METAINFO = dict(classes=MAP_CLASSES, roi_size=(30., 60.))

    def __init__(self, ann_file: str = '', data_root: str = '',
                 data_prefix: dict | None = None, **kwargs) -> None:
        prefix = dict(img='', pts='', sweeps='')
        prefix.update(data_prefix or {})
        super().__init__(ann_file=ann_file, data_root=data_root, data_prefix=prefix, **kwargs)

    def load_data_list(self) -> list[dict]:
        """Read the info file; keep its metainfo where the config sets none."""
        if not osp.isfile(self.ann_file):
            raise FileNotFoundError(f'info file not found: {self.ann_file} '
                                    '(create it with tools/create_data.py nuscenes ...)')
        infos = load_data_file(self.ann_file)  # .pkl: builtins and numpy arrays only
        if not isinstance(infos, dict) or not {'metainfo', 'data_list'} <= set(infos):
            raise ValueError(f'{self.ann_file}: expected dict(metainfo=..., data_list=[...])')
        self.info_classes: tuple[str, ...] = tuple(infos['metainfo'].get('classes', MAP_CLASSES))
        for key, value in infos['metainfo'].items():
            self._metainfo.setdefault(key, value)
        version = infos['metainfo'].get('info_version')
        if version is not None and version < INFO_VERSION:
            print_log(f'{self.ann_file} has info_version {version}, older than this code\'s '
                      f'{INFO_VERSION} (docs/data_format.md, "Info versions"): its map GT may '
                      'differ; rerun tools/create_data.py', 'current', level=30)
        info_roi = infos['metainfo'].get('roi_size')
        roi = self._metainfo['roi_size']
        if info_roi is not None and (roi[0] > info_roi[0] or roi[1] > info_roi[1]):
            print_log(f'roi_size {roi} exceeds the {info_roi} the GT of {self.ann_file} was '
                      'extracted for: GT beyond it is missing', 'current', level=30)
        self._label_map = {i: self.metainfo['classes'].index(c)
                           for i, c in enumerate(self.info_classes)
                           if c in self.metainfo['classes']}
        return [self.parse_data_info(raw) for raw in infos['data_list']]

    def filter_data(self) -> list[dict]:
        """Keep every sample: an empty map is a valid target."""
        return self.data_list

    def parse_data_info(self, info: dict) -> dict:
        """Join paths and stack the per-camera calibration in camera order."""
        info = dict(info)
        cams = list(info['images'])
        images = {}
        for cam in cams:
            item = dict(info['images'][cam])
            item['img_path'] = osp.join(self.data_prefix['img'], item['img_path'])
            images[cam] = item
        info['images'] = images
        info['cam_names'] = cams
        info['img_path'] = [images[c]['img_path'] for c in cams]
        info['cam2img'] = np.stack([_pad4(images[c]['cam2img']) for c in cams])
        info['lidar2cam'] = np.stack([images[c]['lidar2cam'] for c in cams])
        info['lidar2img'] = np.stack([images[c]['lidar2img'] for c in cams])
        info['cam2ego'] = np.stack([images[c]['cam2ego'] for c in cams])
        info['img_aug_matrix'] = np.repeat(np.eye(4)[None], len(cams), axis=0)
        info['lidar_points'] = dict(info['lidar_points'], lidar_path=osp.join(
            self.data_prefix['pts'], info['lidar_points']['lidar_path']))
        info['lidar_sweeps'] = [
            dict(s, lidar_path=osp.join(self.data_prefix['sweeps'], s['lidar_path']))
            for s in info.get('lidar_sweeps', [])]
        info['roi_size'] = tuple(self.metainfo['roi_size'])
        info['classes'] = tuple(self.metainfo['classes'])
        if 'map_annos' in info:
            info['map_annos'] = self._remap(info['map_annos'])
        return info

    def _remap(self, annos: dict) -> dict:
        """Info labels -> dataset labels by class name; drop classes not selected."""
        labels = np.asarray(annos['labels'], dtype=np.int64)
        keep = [i for i, lab in enumerate(labels) if int(lab) in self._label_map]
        return dict(
            labels=np.array([self._label_map[int(labels[i])] for i in keep], dtype=np.int64),
            vectors=[annos['vectors'][i] for i in keep],
            vectors_resampled=np.asarray(annos['vectors_resampled'])[keep],
            bboxes=np.asarray(annos['bboxes'])[keep],
            is_closed=np.asarray(annos['is_closed'], dtype=bool)[keep])

    def get_cat_ids(self, idx: int) -> Sequence[int]:
        """Class indices present in a sample (for class-aware samplers)."""
        annos = self.get_data_info(idx).get('map_annos')
        return [] if annos is None else sorted(set(annos['labels'].tolist()))
