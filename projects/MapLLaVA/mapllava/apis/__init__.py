"""Single-sample inference for the chat and HTTP tools (``http_app`` needs fastapi and is
imported on its own)."""
from .camera_inputs import InputError
from .inference import NO_LANGUAGE_MESSAGE, MapInferencer, NoLanguagePathError, UnknownTokenError

__all__ = ['InputError', 'MapInferencer', 'NO_LANGUAGE_MESSAGE', 'NoLanguagePathError',
           'UnknownTokenError']
