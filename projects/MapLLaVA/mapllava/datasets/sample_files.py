"""The files a dataset's pipeline will read for each sample, and a cheap check of each.

A missing or damaged camera image or LiDAR sweep otherwise stops training in whichever
iteration first draws its sample. ``tools/preflight.py`` runs :func:`check_file` over every
file :func:`sample_files` lists: it exists, an image's header decodes and its end-of-image
marker is there (cv2 refuses a truncated JPEG, whose header still reads fine), a point file's
size is a whole number of points. ``decode=True`` decodes each image in full instead.
"""
from __future__ import annotations

import inspect
import os
import os.path as osp
from typing import Iterator

import mmcv
from PIL import Image

# pipeline step -> the files it reads ('images': every camera; 'points': the LiDAR sweep of
# the sample; 'sweeps': the earlier LiDAR sweeps)
READERS = {'LoadMultiViewImages': 'images', 'LoadMultiViewImageFromFiles': 'images',
           'LoadPointsFromFile': 'points', 'LoadPointsFromMultiSweeps': 'sweeps'}
# the bytes a complete file ends with (trailing zero padding tolerated)
_END_MARKERS = {'JPEG': b'\xff\xd9', 'PNG': b'IEND\xaeB`\x82'}
_TAIL = 64


def _step_arg(step: dict, name: str):
    """A pipeline step's argument, else the default of the registered transform."""
    if name in step:
        return step[name]
    from mmdet3d.registry import TRANSFORMS
    cls = TRANSFORMS.get(step['type'])
    param = inspect.signature(cls).parameters.get(name) if cls else None
    return None if param is None else param.default


def pipeline_reads(pipeline: list) -> dict:
    """``kind -> check options`` for the steps of ``pipeline`` that read sample files."""
    reads = {}
    for step in pipeline or ():
        kind = READERS.get(step.get('type')) if isinstance(step, dict) else None
        if kind == 'images':
            reads[kind] = dict(backend=_step_arg(step, 'imdecode_backend') or 'cv2')
        elif kind in ('points', 'sweeps'):
            reads[kind] = dict(record_bytes=4 * int(_step_arg(step, 'load_dim')))
    return reads


def sample_files(info: dict, reads: dict) -> Iterator[tuple]:
    """``(kind, path)`` of the files a parsed sample info (``dataset.get_data_info``) names."""
    if 'images' in reads:
        for cam in (info.get('images') or {}).values():
            yield 'images', cam['img_path']
    if 'points' in reads:
        yield 'points', info['lidar_points']['lidar_path']
    if 'sweeps' in reads:
        for sweep in info.get('lidar_sweeps') or ():
            yield 'sweeps', sweep.get('lidar_path') or sweep['lidar_points']['lidar_path']


def _check_image(path: str, decode: bool, backend: str = 'cv2') -> str | None:
    with open(path, 'rb') as f:
        try:
            with Image.open(f) as img:
                fmt = img.format
        except Exception:  # PIL: UnidentifiedImageError, or a plugin's parse error
            return 'not an image (the header does not decode)'
        if decode:
            f.seek(0)
            ok = mmcv.imfrombytes(f.read(), backend=backend) is not None
            return None if ok else 'does not decode'
        end = _END_MARKERS.get(fmt)
        if end is None:
            return None
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - _TAIL, 0))
        if not f.read().rstrip(b'\0').endswith(end):
            return f'truncated (no {fmt} end-of-image marker)'
    return None


def _check_points(path: str, record_bytes: int) -> str | None:
    size = osp.getsize(path)
    if path.endswith('.npy'):
        return None if size else 'empty file'
    if size == 0 or size % record_bytes:
        return (f'{size} bytes is not a whole number of {record_bytes}-byte points '
                f'(load_dim {record_bytes // 4} x float32)')
    return None


def check_file(kind: str, path: str, options: dict, decode: bool = False) -> str | None:
    """None when the file at ``path`` looks usable by its reader, else what is wrong."""
    try:
        if kind == 'images':
            return _check_image(path, decode, options.get('backend', 'cv2'))
        return _check_points(path, options['record_bytes'])
    except FileNotFoundError:
        return 'missing'
    except OSError as exc:
        return f'cannot be read ({exc.strerror or exc})'
