"""Read info and prediction files without running code that a shared file names.

``pickle.load`` imports and calls any global a file names: a ``.pkl`` whose ``__reduce__``
returns ``(os.system, (cmd,))`` runs ``cmd``. Info and prediction files are shared between
people and codebases, and they only hold builtin containers and numpy arrays, so
:class:`SafeUnpickler` resolves exactly the globals those need. numpy 1.x pickles name
``numpy.core.*``, numpy 2.x ``numpy._core.*``; both spellings map to this numpy's objects, so
files written under either version load under either.
"""
from __future__ import annotations

import builtins
import codecs
import json
import os.path as osp
import pickle
from typing import Any

import numpy as np

# what pickle itself names for builtin data (protocols 0-5: sets, bytes, complex numbers)
_BUILTIN_NAMES = ('set', 'frozenset', 'bytes', 'bytearray', 'complex')


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle names a global outside the allow-list (one-line message)."""


def _numpy_core() -> tuple:
    try:  # numpy >= 2 (1.26 has a partial numpy._core without ``numeric``)
        from numpy._core import multiarray, numeric
    except ImportError:
        from numpy.core import multiarray, numeric
    return multiarray, numeric


def numpy_globals() -> dict[str, Any]:
    """``'module.name' -> object`` for every global numpy arrays, scalars and dtypes pickle to."""
    multiarray, numeric = _numpy_core()
    table: dict[str, Any] = {'numpy.ndarray': np.ndarray, 'numpy.dtype': np.dtype}
    for core in ('numpy.core', 'numpy._core'):
        table[f'{core}.multiarray._reconstruct'] = multiarray._reconstruct
        table[f'{core}.multiarray.scalar'] = multiarray.scalar
        table[f'{core}.numeric._frombuffer'] = numeric._frombuffer  # protocol 5
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25 pickles dtype classes by these names
    if dtypes is not None:
        table.update({f'numpy.dtypes.{n}': getattr(dtypes, n) for n in dir(dtypes)
                      if n.endswith('DType')})
    return table


def _latin1_encode(text: str, encoding: str = 'latin1') -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles call it for ``bytes``: latin-1 only."""
    if encoding not in ('latin1', 'latin-1'):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r} "
                                "(pickled bytes use 'latin1')")
    return codecs.encode(text, 'latin1')


def _allowed_globals() -> dict[str, Any]:
    table = {f'builtins.{n}': getattr(builtins, n) for n in _BUILTIN_NAMES}
    table['_codecs.encode'] = _latin1_encode
    table.update(numpy_globals())
    return table


_ALLOWED = _allowed_globals()


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only builtin containers and numpy array globals."""

    def find_class(self, module: str, name: str) -> Any:
        if module == '__builtin__':  # protocol 0-2 files name Python 2's module
            module = 'builtins'
        qualname = f'{module}.{name}'
        if qualname not in _ALLOWED:
            raise UnsafePickleError(
                f'refusing to unpickle forbidden global {qualname!r} (only builtin containers '
                'and numpy arrays are allowed; rebuild infos with tools/create_data.py, write '
                'predictions as JSON: docs/evaluation.md)')
        return _ALLOWED[qualname]


def safe_load_pickle(path: str) -> Any:
    """``pickle.load`` of the file at ``path``, refusing any global but builtins and numpy."""
    with open(path, 'rb') as f:
        try:
            return SafeUnpickler(f).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f'{path}: {exc}') from None


class DataFileError(ValueError):
    """An info / predictions file that is not readable in its declared format."""


def load_data_file(path: str) -> Any:
    """Read an info / predictions file by extension: ``.pkl``/``.pickle`` (restricted),
    ``.json`` or ``.yaml``/``.yml`` (safe loader; mmengine's yaml loader builds objects)."""
    ext = osp.splitext(path)[1].lower()
    if ext in ('.pkl', '.pickle'):
        return safe_load_pickle(path)
    if ext == '.json':
        with open(path, encoding='utf-8') as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as exc:
                raise DataFileError(f'{path}: not valid JSON ({exc})') from None
    if ext in ('.yaml', '.yml'):
        import yaml
        with open(path, encoding='utf-8') as f:
            try:
                return yaml.safe_load(f)
            except yaml.YAMLError as exc:
                msg = ' '.join(str(exc).split())
                raise DataFileError(f'{path}: not valid YAML ({msg})') from None
    raise DataFileError(f'{path}: unsupported file type {ext!r} (expected .pkl, .json or .yaml)')
