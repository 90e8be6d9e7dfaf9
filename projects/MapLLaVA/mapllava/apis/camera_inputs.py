"""Turn user-supplied camera images and calibration into the start of a pipeline result.

Uploaded images replace ``LoadMultiViewImages``: the rest of the test pipeline (resize,
packing) then runs as for a dataset sample, so the model sees the same tensors it would for
the same images read from disk. Calibration follows docs/data_format.md: ``cam2img`` (3x3,
or 4x4 padded) and ``lidar2cam`` (4x4) of the images as given, and an optional
``img_aug_matrix`` (original pixel -> given pixel) when the images were already resized or
cropped after calibration. Every problem is an :class:`InputError` naming the field.
"""
from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

import cv2
import numpy as np


class InputError(ValueError):
    """A request field is malformed; ``field`` names it (``images[2]``, ``calib.cam2img``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f'{field}: {message}')


def _pad4(mat: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:mat.shape[0], :mat.shape[1]] = mat
    return out


def base64_bytes(text: str, field: str) -> bytes:
    """The bytes of base64 ``text`` (a ``data:image/...;base64,`` prefix is allowed)."""
    if text.startswith('data:'):
        text = text.split(',', 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, 'not valid base64') from None


def decode_image(data: bytes | str | os.PathLike | np.ndarray, field: str) -> np.ndarray:
    """An HxWx3 uint8 BGR image from an array, encoded JPEG / PNG bytes or a file path."""
    if isinstance(data, (str, os.PathLike)):
        try:
            with open(data, 'rb') as f:
                data = f.read()
        except OSError as err:
            raise InputError(field, f'cannot read {data}: {err.strerror or err}') from None
    if isinstance(data, (bytes, bytearray, memoryview)):
        if not len(data):
            raise InputError(field, 'empty image')
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(field, 'cannot decode the image (expected a JPEG or PNG file)')
    elif isinstance(data, np.ndarray):
        img = data
    else:
        raise InputError(field, f'expected an image array, bytes or a path, got '
                         f'{type(data).__name__}')
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise InputError(field, f'expected an HxWx3 image, got shape {tuple(img.shape)}')
    if img.dtype != np.uint8:
        raise InputError(field, f'expected uint8 pixels, got {img.dtype}')
    return np.ascontiguousarray(img)


def _matrices(value, field: str, num_views: int, shapes: Sequence[tuple]) -> np.ndarray:
    """``num_views`` finite, invertible matrices of one of ``shapes``, as float64 4x4."""
    allowed = ' or '.join('x'.join(map(str, s)) for s in shapes)
    try:
        mats = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(field, f'expected {num_views} numeric matrices of shape '
                         f'{allowed}') from None
    if mats.ndim != 3 or mats.shape[0] != num_views or tuple(mats.shape[1:]) not in shapes:
        raise InputError(field, f'expected {num_views} matrices of shape {allowed} (one per '
                         f'camera), got an array of shape {mats.shape}')
    for i, mat in enumerate(mats):
        if not np.isfinite(mat).all():
            raise InputError(f'{field}[{i}]', 'has non-finite values')
        if abs(np.linalg.det(mat)) < 1e-12 or np.linalg.cond(mat) > 1e12:
            raise InputError(f'{field}[{i}]', 'is singular (not invertible)')
        if mat.shape == (4, 4) and not np.allclose(mat[3], [0, 0, 0, 1]):
            raise InputError(f'{field}[{i}]', 'last row must be [0, 0, 0, 1]')
    return np.stack([_pad4(m) for m in mats])


def camera_results(images: Sequence, calib: dict, num_views: int,
                   cam_names: Sequence[str]) -> dict:
    """The pipeline result ``LoadMultiViewImages`` would give for these images.

    Args:
        images: one per camera, dataset camera order: arrays (BGR), encoded JPEG / PNG
            bytes or file paths (:func:`decode_image`).
        calib: ``cam2img`` (N, 3, 3), ``lidar2cam`` (N, 4, 4), optional
            ``img_aug_matrix`` (N, 3, 3 or 4, 4).
        num_views: the number of cameras the model was trained with.
        cam_names: their names, for the pictures and the metainfo.
    """
    if not isinstance(images, (list, tuple)):
        raise InputError('images', f'expected a list of {num_views} images')
    if len(images) != num_views:
        raise InputError('images', f'expected {num_views} images (one per camera: '
                         f'{", ".join(cam_names)}), got {len(images)}')
    if not isinstance(calib, dict):
        raise InputError('calib', 'expected dict(cam2img=[...], lidar2cam=[...])')
    unknown = sorted(set(calib) - {'cam2img', 'lidar2cam', 'img_aug_matrix'})
    if unknown:
        raise InputError(f'calib.{unknown[0]}', 'unknown key (expected cam2img, lidar2cam, '
                         'img_aug_matrix)')
    for key in ('cam2img', 'lidar2cam'):
        if calib.get(key) is None:
            raise InputError(f'calib.{key}', 'missing')
    cam2img = _matrices(calib['cam2img'], 'calib.cam2img', num_views, [(3, 3), (4, 4)])
    lidar2cam = _matrices(calib['lidar2cam'], 'calib.lidar2cam', num_views, [(4, 4)])
    aug = calib.get('img_aug_matrix')
    aug = (np.repeat(np.eye(4)[None], num_views, axis=0) if aug is None else
           _matrices(aug, 'calib.img_aug_matrix', num_views, [(3, 3), (4, 4)]))
    imgs = [decode_image(img, f'images[{i}]') for i, img in enumerate(images)]
    shapes = [img.shape[:2] for img in imgs]
    return dict(img=imgs, img_shape=list(shapes), ori_shape=list(shapes), num_views=num_views,
                cam_names=list(cam_names), cam2img=cam2img, lidar2cam=lidar2cam,
                lidar2img=cam2img @ lidar2cam, img_aug_matrix=aug)

