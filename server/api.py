"""The management REST API under /v1, bearer-token auth, /metrics and the dashboard routes."""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import json
import logging
import time
import tomllib
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedge.edge_client.artifact import Artifact, load_artifact
from fedge.edge_client.errors import ConfigError, FedgeError
from fedge.edge_client.trainer import LocalTrainer
from fedge.edge_client.weights import pack_weights, unpack_weights
from fedge.server.api_models import (
    DEVICE_STATUSES,
    ActiveJob,
    CurrentRound,
    DeviceDetail,
    DeviceOut,
    DeviceRound,
    ErrorBody,
    FleetOverview,
    JobDetail,
    JobOut,
    Page,
    Participant,
    ProfileCount,
    RoundDetail,
    RoundOut,
    device_status,
    timings,
)
from fedge.server.job import JobConfig, parse_job_config
from fedge.server.metrics import metrics_registry
from fedge.server.model_files import bake_weights, model_zip, weights_npz
from fedge.server.rounds import RoundRun
from fedge.server.store import Store

if TYPE_CHECKING:
    from fedge.edge_client.mqtt_link import MqttLink
    from fedge.server.app import ServerSettings
    from fedge.server.coordinator import Coordinator
    from fedge.server.http_app import TrafficCounter

log = logging.getLogger("fedge.api")

ROLES = ("read", "admin")
MAX_JOB_BODY = 256 * 1024
STATIC_DIR = Path(__file__).parent / "static"
TOML_TYPES = ("application/toml", "text/plain", "text/x-toml", "")
BearerCredentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Security(HTTPBearer(auto_error=False, description="a token from server.toml [api.tokens]")),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Offset = Annotated[int, Query(ge=0, description="items to skip")]
AtRound = Annotated[int | None, Query(ge=0, description="a committed round (default: the latest)")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422)
}


class ServerView(Protocol):
    """What the API reads from the running server (`server.app.FedgeServer`)."""

    @property
    def settings(self) -> ServerSettings: ...

    @property
    def traffic(self) -> TrafficCounter: ...

    @property
    def coordinator(self) -> Coordinator | None: ...

    @property
    def link(self) -> MqttLink | None: ...

    def submit_job(self, job: JobConfig) -> Any:
        """Start ``job``; RuntimeError if one is running (may be a coroutine function)."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenAuth:
    """Bearer tokens mapped to a role; ``admin`` may do everything ``read`` may."""

    def __init__(self, tokens: Mapping[str, str], host: str):
        for token, role in tokens.items():
            if not isinstance(token, str) or not token or role not in ROLES:
                raise ConfigError(
                    f"api token entries must map a non-empty token to one of {ROLES}, "
                    f"got a token with role {role!r}"
                )
        self.tokens = {t.encode(): r for t, r in tokens.items()}
        self.host = host
        self.open = not tokens and is_loopback(host)
        if self.open:
            log.warning(
                "no API tokens configured: the management API is open to anyone who can "
                "reach %s (loopback only)",
                host,
            )
        elif not tokens:
            log.warning(
                "no API tokens configured and the server listens on %s: the management "
                "API refuses every request",
                host,
            )

    def role_of(self, token: str | None) -> str:
        """Role of a bearer token; HTTP 401/403 errors for missing, unknown or unusable ones."""
        if self.open:
            return "admin"
        if not self.tokens:
            raise HTTPException(
                403,
                f"the management API is disabled: no API tokens are configured "
                f"and the server listens on {self.host}, which is not loopback; "
                f"add [api.tokens] to server.toml",
            )
        challenge = {"WWW-Authenticate": "Bearer"}
        if not token:
            raise HTTPException(
                401, "missing bearer token: send 'Authorization: Bearer <token>'", headers=challenge
            )
        given = token.encode()
        role = None
        for known, known_role in self.tokens.items():
            if hmac.compare_digest(given, known):
                role = known_role
        if role is None:
            raise HTTPException(
                401,
                "invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return role

    def require(self, need: str) -> Callable[..., Coroutine[Any, Any, str]]:
        """FastAPI dependency admitting tokens whose role covers ``need``."""

        async def check(creds: BearerCredentials) -> str:
            role = self.role_of(creds.credentials if creds else None)
            if need == "admin" and role != "admin":
                raise HTTPException(
                    403, "this route needs an admin token; the token given is read-only"
                )
            return role

        return check


def parse_job_body(body: bytes, content_type: str) -> dict[str, Any]:
    """A job config from a request body: JSON (by content type) or TOML text.

    Raises
    ------
    ConfigError
        If the body is too large, not UTF-8, not valid JSON/TOML, or not a table.
    """
    if len(body) > MAX_JOB_BODY:
        raise ConfigError(f"job config is {len(body)} bytes, over the {MAX_JOB_BODY}-byte limit")
    media = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
        if media.endswith("json"):
            raw = json.loads(text)
        elif media in TOML_TYPES:
            raw = tomllib.loads(text)
        else:
            raise ConfigError(
                f"send the job config as application/toml or application/json, not {media!r}"
            )
    except UnicodeDecodeError as exc:
        raise ConfigError(f"job config is not UTF-8 text: {exc}") from exc
    except (
        ValueError,
        RecursionError,
    ) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ConfigError(
            f"job config is not valid {'JSON' if media.endswith('json') else 'TOML'}: {exc}"
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"job config must be a table of tables, got {type(raw).__name__}")
    return raw


def build_job(raw: dict[str, Any], base_dir: Path) -> JobConfig:
    """`parse_job_config` with every malformed-value failure reported as ConfigError."""
    try:
        return parse_job_config(raw, base_dir)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise ConfigError(f"invalid job config: {exc}") from exc


class Api:
    """Route handlers over one store and one running server."""

    def __init__(self, store: Store, server: ServerView):
        self.store = store
        self.server = server

    # shared lookups ----------------------------------------------------------------------
    @property
    def coordinator(self) -> Coordinator | None:
        return self.server.coordinator

    def active(self, job_id: str | None = None) -> Coordinator | None:
        """The coordinator of the running job (of ``job_id`` if given), if any."""
        c = self.coordinator
        if c is None or c.finished.is_set() or (job_id is not None and c.job.name != job_id):
            return None
        return c

    def current(self) -> RoundRun | None:
        """The round the running job is in, if any."""
        c = self.active()
        return c.current if c is not None else None

    def job_row(self, job_id: str) -> dict[str, Any]:
        row = self.store.job(job_id)
        if row is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return row

    def job_out(self, row: dict[str, Any]) -> JobOut:
        c = self.active(row["id"])
        status = row["status"]
        if c is not None and status == "running" and not c.paused.is_set():
            status = "paused"
        config = row["config"] if isinstance(row["config"], dict) else {}
        return JobOut(
            id=row["id"],
            fleet=config.get("fleet"),
            status=status,
            active=c is not None,
            created=row["created"],
            updated=row["updated"],
            rounds_total=config.get("rounds"),
            committed_round=row["committed_round"],
            weights_sha=row["weights_sha"],
            reason=row["reason"],
        )

    # fleet and devices -------------------------------------------------------------------
    async def fleet(self) -> FleetOverview:
        current = self.current()
        rows = self.store.query("SELECT id, profile, online FROM devices")
        by_profile: dict[str, ProfileCount] = {}
        by_status = dict.fromkeys(DEVICE_STATUSES, 0)
        for r in rows:
            p = by_profile.setdefault(r["profile"] or "unknown", ProfileCount(total=0, online=0))
            p.total += 1
            p.online += int(bool(r["online"]))
            by_status[device_status(r["id"], bool(r["online"]), current)] += 1
        job = None
        c = self.coordinator
        if c is not None:
            row = self.store.job(c.job.name)
            status = self.job_out(row).status if row else c.status
            job = ActiveJob(
                id=c.job.name,
                status=status,
                rounds_total=c.job.rounds,
                rounds_committed=row["committed_round"] if row else 0,
                current_round=CurrentRound.from_run(current) if current else None,
            )
        return FleetOverview(
            devices_total=len(rows),
            devices_online=sum(int(r["online"]) for r in rows),
            by_profile=by_profile,
            by_status=by_status,
            job=job,
        )

    async def devices(
        self,
        online: bool | None = None,
        profile: str | None = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> Page[DeviceOut]:
        where: list[str] = []
        args: list[Any] = []
        if online is not None:
            where.append("online=?")
            args.append(int(online))
        if profile is not None:
            where.append("profile=?")
            args.append(profile)
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        total = self.store.query(f"SELECT COUNT(*) AS n FROM devices{cond}", tuple(args))[0]["n"]
        rows = self.store.query(
            f"SELECT * FROM devices{cond} ORDER BY id LIMIT ? OFFSET ?", (*args, limit, offset)
        )
        current = self.current()
        return Page[DeviceOut](
            total=total,
            limit=limit,
            offset=offset,
            items=[DeviceOut.from_row(r, current) for r in rows],
        )

    async def device(
        self, device_id: str, history: Annotated[int, Query(ge=0, le=10000)] = 100
    ) -> DeviceDetail:
        rows = self.store.query("SELECT * FROM devices WHERE id=?", (device_id,))
        if not rows:
            raise HTTPException(404, f"no device {device_id!r}")
        past = self.store.query(
            "SELECT p.*, r.job_id, r.round, r.attempt, r.kind, r.state AS round_state "
            "FROM participants p JOIN rounds r ON r.rid = p.rid WHERE p.device_id=? "
            "ORDER BY p.rid DESC LIMIT ?",
            (device_id, history),
        )
        base = DeviceOut.from_row(rows[0], self.current())
        return DeviceDetail(**base.model_dump(), history=[DeviceRound(**r) for r in past])

    # jobs --------------------------------------------------------------------------------
    async def list_jobs(self, limit: Limit = 100, offset: Offset = 0) -> Page[JobOut]:
        total = self.store.query("SELECT COUNT(*) AS n FROM jobs")[0]["n"]
        ids = self.store.query(
            "SELECT id FROM jobs ORDER BY created DESC, id LIMIT ? OFFSET ?", (limit, offset)
        )
        return Page[JobOut](
            total=total,
            limit=limit,
            offset=offset,
            items=[self.job_out(self.job_row(r["id"])) for r in ids],
        )

    async def get_job(self, job_id: str) -> JobDetail:
        row = self.job_row(job_id)
        counts = self.store.query(
            "SELECT state, COUNT(*) AS n FROM rounds WHERE job_id=? GROUP BY state", (job_id,)
        )
        last = self.store.query(
            "SELECT * FROM rounds WHERE job_id=? ORDER BY rid DESC LIMIT 1", (job_id,)
        )
        return JobDetail(
            **self.job_out(row).model_dump(),
            config=row["config"],
            rounds_by_state={r["state"]: r["n"] for r in counts},
            last_round=RoundOut.from_row(last[0], self.current()) if last else None,
        )

    async def create_job(self, request: Request) -> JSONResponse:
        try:
            raw = parse_job_body(await request.body(), request.headers.get("content-type", ""))
            job = build_job(raw, self.server.settings.state_dir)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from exc
        existing = self.store.job(job.name)
        if existing is not None:
            raise HTTPException(
                409, f"job {job.name!r} already exists ({existing['status']}); pick another name"
            )
        try:
            submitted = self.server.submit_job(job)
            if inspect.isawaitable(submitted):
                await submitted
        except RuntimeError as exc:
            raise HTTPException(409, str(exc)) from exc
        except FedgeError as exc:
            raise HTTPException(422, str(exc)) from exc
        row = self.store.job(job.name)
        out = (
            self.job_out(row)
            if row
            else JobOut(
                id=job.name,
                fleet=job.fleet,
                status="starting",
                active=True,
                created=time.time(),
                updated=time.time(),
                rounds_total=job.rounds,
                committed_round=0,
                weights_sha=None,
                reason=None,
            )
        )
        return JSONResponse(
            out.model_dump(), status_code=201, headers={"Location": f"/v1/jobs/{job.name}"}
        )

    def _control(self, job_id: str) -> Coordinator:
        row = self.job_row(job_id)
        c = self.active(job_id)
        if c is None:
            raise HTTPException(409, f"job {job_id!r} is not running (status {row['status']})")
        return c

    async def pause(self, job_id: str) -> JobOut:
        self._control(job_id).paused.clear()
        log.info("job %s paused through the API (takes effect at the next round)", job_id)
        return self.job_out(self.job_row(job_id))

    async def resume(self, job_id: str) -> JobOut:
        self._control(job_id).paused.set()
        log.info("job %s resumed through the API", job_id)
        return self.job_out(self.job_row(job_id))

    async def stop(self, job_id: str) -> JobOut:
        c = self._control(job_id)
        c.stop("stopped by operator through the API")
        c.paused.set()  # a paused job must wake up to see that it was stopped
        return self.job_out(self.job_row(job_id))

    # rounds ------------------------------------------------------------------------------
    async def rounds(
        self,
        job_id: str,
        kind: str | None = None,
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 100,
        offset: Offset = 0,
    ) -> Page[RoundOut]:
        self.job_row(job_id)
        where: list[str] = ["job_id=?"]
        args: list[Any] = [job_id]
        for column, value in (("kind", kind), ("state", state)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        cond = " AND ".join(where)
        total = self.store.query(f"SELECT COUNT(*) AS n FROM rounds WHERE {cond}", tuple(args))[0][
            "n"
        ]
        rows = self.store.query(
            f"SELECT * FROM rounds WHERE {cond} ORDER BY rid LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        current = self.current()
        return Page[RoundOut](
            total=total,
            limit=limit,
            offset=offset,
            items=[RoundOut.from_row(r, current) for r in rows],
        )

    async def round_detail(self, job_id: str, rid: int) -> RoundDetail:
        self.job_row(job_id)
        row = self.store.round_row(rid)
        if row is None or row["job_id"] != job_id:
            raise HTTPException(404, f"job {job_id!r} has no round with rid {rid}")
        base = RoundOut.from_row(row, self.current())
        participants = [
            Participant(**{k: p[k] for k in Participant.model_fields})
            for p in self.store.participants(rid)
        ]
        return RoundDetail(
            **base.model_dump(),
            participants=participants,
            dropouts=[p.device_id for p in participants if p.status == "dropped"],
            timings=timings(self.store.transitions(rid), row["state"] in ("committed", "failed")),
        )

    # model files -------------------------------------------------------------------------
    def _model_of(self, job_id: str, rnd: int | None) -> tuple[Artifact, list[np.ndarray], str]:
        """Artifact, weights and a description of a job's model after round ``rnd`` (or latest)."""
        row = self.job_row(job_id)
        c = self.coordinator
        live = c is not None and c.job.name == job_id
        if rnd is None and live and c is not None:
            return c.artifact, list(c.weights), f"job {job_id} after round {row['committed_round']}"
        artifact = (
            c.artifact if live and c is not None else load_artifact(Path(row["config"]["artifact"]))
        )
        shapes = [t.shape for t in artifact.manifest.tensors]
        if rnd is None:
            sha, rnd = row["weights_sha"], row["committed_round"]
        else:
            found = self.store.query(
                "SELECT weights_sha FROM checkpoints WHERE job_id=? AND round=?", (job_id, rnd)
            )
            if not found:
                raise HTTPException(404, f"job {job_id!r} has no checkpoint for round {rnd}")
            sha = found[0]["weights_sha"]
        if sha is None:  # nothing committed yet: the artifact's own initial weights
            return (
                artifact,
                LocalTrainer(artifact).get_weights(),
                f"job {job_id} before its first round",
            )
        if c is None or not c.blobs.has(sha):
            raise HTTPException(404, f"weights {sha} of job {job_id!r} are not in the blob store")
        return artifact, unpack_weights(c.blobs.get(sha), shapes), f"job {job_id} after round {rnd}"

    async def model_bundle(self, job_id: str, round: AtRound = None) -> Response:
        artifact, weights, what = await run_in_threadpool(self._model_of, job_id, round)
        data = await run_in_threadpool(
            model_zip, artifact.manifest, artifact.model_bytes, weights, what
        )
        return _download(data, "application/zip", f"{job_id}-model.zip")

    async def model_tflite(self, job_id: str, round: AtRound = None) -> Response:
        artifact, weights, _ = await run_in_threadpool(self._model_of, job_id, round)
        data = await run_in_threadpool(
            bake_weights, artifact.model_bytes, artifact.manifest, weights
        )
        return _download(data, "application/octet-stream", f"{job_id}.tflite")

    async def weights(
        self,
        job_id: str,
        round: AtRound = None,
        format: Literal["msgpack", "npz"] = "msgpack",
    ) -> Response:
        artifact, values, _ = await run_in_threadpool(self._model_of, job_id, round)
        if format == "npz":
            return _download(
                weights_npz(artifact.manifest, values),
                "application/octet-stream",
                f"{job_id}-weights.npz",
            )
        return _download(pack_weights(values), "application/msgpack", f"{job_id}-weights.msgpack")


def _download(data: bytes, media_type: str, filename: str) -> Response:
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


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
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/toml": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        },
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
    app: FastAPI, store: Store, server: ServerView, api_tokens: Mapping[str, str]
) -> None:
    """Add /v1 (management API), /metrics, the dashboard (/ and /dashboard) and /static to ``app``.

    Parameters
    ----------
    app
        The server's FastAPI app (it already serves /v1/blobs and /healthz, which stay open).
    store
        The server's SQLite store.
    server
        The running server: its coordinator, settings, traffic counter and MQTT link.
    api_tokens
        Bearer token -> ``read`` or ``admin``. Empty: the API is open when the server listens
        on loopback, and refuses every request otherwise.

    Raises
    ------
    ConfigError
        If a token maps to an unknown role.
    """
    auth = TokenAuth(api_tokens, server.settings.http_host)
    api = Api(store, server)
    _install_error_handlers(app)
    app.include_router(_router(api, auth))
    registry = metrics_registry(store, server)

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
