"""The HTTP JSON API and web viewer over a :class:`MapInferencer` (``tools/serve.py``).

Endpoints (docs/serving.md):

* ``GET /`` the viewer page (static, no external resources)
* ``GET /samples`` tokens of the split, classes, camera names
* ``GET /sample/{token}`` whether it has GT, and its reference (GT) question/answer pairs
* ``POST /predict`` ``{token?, images?, calib?, question?, score_thr?}`` → the result
* ``GET /sample/{token}/bev.png`` and ``/sample/{token}/cam/{i}.png`` pictures with GT and
  prediction overlays (``?score_thr=``)

Errors are JSON ``{"detail": message, "field": name}``: 400 for a malformed field, 404 for
an unknown token or camera, 422 when a question is asked of a model without a language
path (and pydantic's own 422 for a body of the wrong types).
"""
from __future__ import annotations

import os.path as osp
from typing import Optional

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .camera_inputs import InputError, base64_bytes
from .inference import MapInferencer, NoLanguagePathError, UnknownTokenError
from .sample_pictures import bev_png, camera_png

VIEWER = osp.join(osp.dirname(osp.abspath(__file__)), 'static', 'viewer.html')
Matrices = list[list[list[float]]]


class Calibration(BaseModel):
    """Per camera, dataset order: ``cam2img`` 3x3 (or 4x4), ``lidar2cam`` 4x4, optional
    ``img_aug_matrix`` (original pixel -> given pixel)."""
    model_config = ConfigDict(extra='forbid')
    cam2img: Matrices
    lidar2cam: Matrices
    img_aug_matrix: Optional[Matrices] = None


class PredictRequest(BaseModel):
    """A dataset ``token`` (default: the split's first sample) or six base64 JPEG/PNG
    ``images`` with their ``calib``; an optional ``question``."""
    model_config = ConfigDict(extra='forbid')
    token: Optional[str] = None
    images: Optional[list[str]] = None
    calib: Optional[Calibration] = None
    question: Optional[str] = None
    score_thr: Optional[float] = Field(None, description='keep vectors scoring at least this')


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content=dict(detail=message, field=field))


def create_app(inferencer: MapInferencer) -> FastAPI:
    """The FastAPI app serving ``inferencer`` (handlers are sync: the model runs in
    Starlette's thread pool, one request at a time through the inferencer's lock)."""
    app = FastAPI(title='MapLLaVA', description='online vector maps, and questions about '
                  'them', version='1')

    @app.exception_handler(UnknownTokenError)
    def _unknown(request, exc: UnknownTokenError):
        return _error(404, exc.field, str(exc))

    @app.exception_handler(InputError)
    def _bad_input(request, exc: InputError):
        return _error(400, exc.field, str(exc))

    @app.exception_handler(NoLanguagePathError)
    def _no_language(request, exc: NoLanguagePathError):
        return _error(422, 'question', str(exc))

    @app.get('/', response_class=HTMLResponse, include_in_schema=False)
    def viewer() -> HTMLResponse:
        with open(VIEWER, encoding='utf-8') as f:
            return HTMLResponse(f.read())

    @app.get('/samples')
    def samples() -> dict:
        return dict(split=inferencer.split, tokens=inferencer.tokens,
                    classes=list(inferencer.classes), cam_names=list(inferencer.cam_names),
                    num_views=inferencer.num_views)

    @app.get('/sample/{token}')
    def sample(token: str) -> dict:
        info = inferencer.data_info(token)
        annos = info.get('map_annos')
        return dict(token=token, has_gt=annos is not None,
                    num_gt=None if annos is None else len(annos['labels']),
                    reference_qa=inferencer.reference_qa(token))

    @app.post('/predict')
    def predict(req: PredictRequest) -> dict:
        images = None if req.images is None else [
            base64_bytes(text, f'images[{i}]') for i, text in enumerate(req.images)]
        calib = None if req.calib is None else req.calib.model_dump(exclude_none=True)
        return inferencer.predict(token=req.token, images=images, calib=calib,
                                  questions=None if req.question is None else [req.question],
                                  score_thr=req.score_thr)

    @app.get('/sample/{token}/bev.png', response_class=Response)
    def bev(token: str, score_thr: float = Query(0.3)) -> Response:
        out = inferencer.predict_sample(_known(token))
        return Response(bev_png(out, inferencer.classes, inferencer.roi_size, score_thr),
                        media_type='image/png')

    @app.get('/sample/{token}/cam/{view}.png', response_class=Response)
    def camera(token: str, view: int, score_thr: float = Query(0.3)) -> Response:
        _known(token)
        if not 0 <= view < inferencer.num_views:
            return _error(404, 'view', f'view: camera {view} does not exist (0..'
                          f'{inferencer.num_views - 1}: {", ".join(inferencer.cam_names)})')
        out = inferencer.predict_sample(token)
        return Response(camera_png(out, view, inferencer.classes, score_thr),
                        media_type='image/png')

    def _known(token: str) -> str:
        inferencer.index(token)
        return token

    return app
