"""The teacher tiers as a SageMaker inference container (``fleetloop-cloud serve``).

SageMaker runs ``docker run IMAGE serve`` with the model package unpacked in ``/opt/ml/model`` and
sends ``GET /ping`` and ``POST /invocations`` to port 8080; a batch transform job posts each
frame of its input (``Content-Type: application/x-image``, PNG or JPEG bytes) and writes the
JSON answer to ``<output>/<input key>.out``. The answer carries what the pool stores for a
teacher: ``{"probs": [...], "embedding": [...], "tier", "name", "version"}``. The package is the
very one ONNX Runtime loads locally (hashes verified before a session exists), so the embedded
default and the production path label with the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from fleetloop_core.errors import FleetLoopError
from fleetloop_core.inference import TierModel

from fleetloop_cloud.frames import FrameError, decode_image

IMAGE_TYPES = ("application/x-image", "image/png", "image/jpeg")


def predict_bytes(model: TierModel, data: bytes, where: str = "<request>") -> dict:
    """Return the teacher's answer for one encoded frame."""
    image = decode_image(data, where)
    out = model.infer(image)
    answer = {
        "probs": np.asarray(out.probs[0], np.float32).round(6).tolist(),
        "tier": model.tier,
        "name": model.manifest.name,
        "version": model.version,
    }
    if out.embedding is not None:
        answer["embedding"] = np.asarray(out.embedding[0], np.float32).round(6).tolist()
    return answer


def create_app(model_dir: str | Path):
    """Return the FastAPI app serving the package in ``model_dir`` (/ping, /invocations)."""
    # (FastAPI resolves the handlers' annotations in this module's globals: imports stay at the top)
    model = TierModel.load(model_dir, providers=("cpu",), warmup=1)
    app = FastAPI(title=f"FleetLoop {model.tier} {model.version}")

    @app.get("/ping")
    def ping() -> Response:
        return Response(status_code=200)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type not in IMAGE_TYPES:
            return JSONResponse(
                {"error": f"unsupported content type {content_type!r} (send {', '.join(IMAGE_TYPES)})"}, status_code=415
            )
        try:
            return JSONResponse(predict_bytes(model, await request.body()))
        except (FrameError, FleetLoopError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return app
