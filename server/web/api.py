"""The web layer's entry point: /v1 routes with bearer-token roles, /metrics and the dashboard."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedge.server.control import ServerControl
from fedge.server.store import StoreReader
from fedge.server.web.api_models import ErrorBody, JobOut
from fedge.server.web.auth import TokenAuth
from fedge.server.web.handlers import Api
from fedge.server.web.metrics import metrics_registry

log = logging.getLogger("fedge.api")

STATIC_DIR = Path(__file__).parent / "static"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422)
}
_JOB_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/toml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


def _router(api: Api, auth: TokenAuth) -> APIRouter:
    r = APIRouter(prefix="/v1", dependencies=[Depends(auth.require("read"))], responses=_ERRORS)
    admin = [Depends(auth.require("admin"))]
    r.get("/fleet", tags=["fleet"], summary="Fleet overview")(api.fleet)
    r.get("/devices", tags=["fleet"], summary="Devices (filter, paginate)")(api.devices)
    r.get("/devices/{device_id}", tags=["fleet"], summary="One device and its rounds")(api.device)
    r.get("/jobs", tags=["jobs"], summary="Jobs, newest first")(api.list_jobs)
    r.post(
        "/jobs",
        tags=["jobs"],
        status_code=201,
        dependencies=admin,
        response_model=JobOut,
        summary="Start a job from a job config (TOML text or JSON of the same tables)",
        openapi_extra=_JOB_BODY,
    )(api.create_job)
    r.get("/jobs/{job_id}", tags=["jobs"], summary="One job")(api.get_job)
    for action in ("pause", "resume", "stop"):
        r.post(
            f"/jobs/{{job_id}}/{action}",
            tags=["jobs"],
            dependencies=admin,
            summary=f"{action.capitalize()} the running job",
        )(getattr(api, action))
    r.get("/jobs/{job_id}/rounds", tags=["rounds"], summary="Rounds of a job")(api.rounds)
    r.get(
        "/jobs/{job_id}/rounds/{rid}",
        tags=["rounds"],
        summary="One round: participants, dropouts, timings, bytes",
    )(api.round_detail)
    r.get(
        "/jobs/{job_id}/model",
        tags=["model"],
        response_class=Response,
        summary="Zip: model.tflite with the weights baked in, manifest.json, weights.msgpack",
    )(api.model_bundle)
    r.get(
        "/jobs/{job_id}/model.tflite",
        tags=["model"],
        response_class=Response,
        summary="model.tflite whose variables start at the job's weights",
    )(api.model_tflite)
    r.get(
        "/jobs/{job_id}/weights",
        tags=["model"],
        response_class=Response,
        summary="The weights blob (msgpack, as set_weights takes it) or an .npz",
    )(api.weights)
    return r


def _install_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(
            {"error": exc.detail},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        ]
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)


def mount_api(
    app: FastAPI,
    reader: StoreReader,
    control: ServerControl,
    *,
    state_dir: Path,
    http_host: str,
    api_tokens: Mapping[str, str],
) -> None:
    """Add /v1 (management API), /metrics, the dashboard (/ and /dashboard) and /static to ``app``.

    Parameters
    ----------
    app
        The server's FastAPI app (it already serves /v1/blobs and /healthz, which stay open).
    reader
        The store's read interface: every stored fact the routes show.
    control
        The live server: the active job, its round, traffic counters and the operator's actions.
    state_dir
        Where relative paths in a posted job config resolve.
    http_host
        The address the server listens on (no tokens: open on loopback, closed elsewhere).
    api_tokens
        Bearer token -> ``read`` or ``admin``. Empty: the API is open when the server listens
        on loopback, and refuses every request otherwise.

    Raises
    ------
    ConfigError
        If a token maps to an unknown role.
    """
    auth = TokenAuth(api_tokens, http_host)
    api = Api(reader, control, state_dir)
    _install_error_handlers(app)
    app.include_router(_router(api, auth))
    registry = metrics_registry(reader, control)

    @app.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        dependencies=[Depends(auth.require("read"))],
        summary="Prometheus metrics",
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
