"""The /v1 route handlers: history via `StoreReader`, the live server via `ServerControl`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from fastapi import HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from fedge.edge_client.errors import ConfigError, FedgeError
from fedge.edge_client.weights import pack_weights
from fedge.server.control import (
    ActiveJob,
    JobConflict,
    JobNotFound,
    LiveRound,
    ModelSnapshot,
    ServerControl,
)
from fedge.server.model_files import bake_weights, model_zip, weights_npz
from fedge.server.store import Row, StoreReader
from fedge.server.web.api_models import (
    DEVICE_STATUSES,
    CurrentRound,
    DeviceDetail,
    DeviceOut,
    DeviceRound,
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
from fedge.server.web.api_models import ActiveJob as ActiveJobOut
from fedge.server.web.job_body import build_job, parse_job_body

log = logging.getLogger("fedge.api")

ACTIVE_STATUSES = ("running", "paused")
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Offset = Annotated[int, Query(ge=0, description="items to skip")]
AtRound = Annotated[int | None, Query(ge=0, description="a committed round (default: the latest)")]


class Api:
    """Route handlers over the store's reads and the server's control interface."""

    def __init__(self, reader: StoreReader, control: ServerControl, state_dir: Path):
        self.reader = reader
        self.control = control
        self.state_dir = state_dir  # relative paths in a posted job resolve here

    # shared lookups -----------------------------------------------------------------------
    def active(self, job_id: str | None = None) -> ActiveJob | None:
        """The job in progress (``job_id`` if given) while it has not ended, else None."""
        job = self.control.active_job()
        if job is None or job.status not in ACTIVE_STATUSES:
            return None
        return job if job_id is None or job.name == job_id else None

    def current(self) -> LiveRound | None:
        """The round the running job is in, if any."""
        return self.control.live_round() if self.active() is not None else None

    def job_row(self, job_id: str) -> Row:
        row = self.reader.job(job_id)
        if row is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return row

    def job_out(self, row: Row) -> JobOut:
        live = self.active(row["id"])
        status = row["status"]
        if live is not None and status == "running" and live.status == "paused":
            status = "paused"
        config = row["config"] if isinstance(row["config"], dict) else {}
        return JobOut(
            id=row["id"],
            fleet=config.get("fleet"),
            status=status,
            active=live is not None,
            created=row["created"],
            updated=row["updated"],
            rounds_total=config.get("rounds"),
            committed_round=row["committed_round"],
            weights_sha=row["weights_sha"],
            reason=row["reason"],
        )

    # fleet and devices --------------------------------------------------------------------
    async def fleet(self) -> FleetOverview:
        current = self.current()
        rows = self.reader.devices().items
        by_profile: dict[str, ProfileCount] = {}
        by_status = dict.fromkeys(DEVICE_STATUSES, 0)
        for r in rows:
            p = by_profile.setdefault(r["profile"] or "unknown", ProfileCount(total=0, online=0))
            p.total += 1
            p.online += int(bool(r["online"]))
            by_status[device_status(r["id"], bool(r["online"]), current)] += 1
        job = None
        served = self.control.active_job()
        if served is not None:
            row = self.reader.job(served.name)
            job = ActiveJobOut(
                id=served.name,
                status=self.job_out(row).status if row else served.status,
                rounds_total=served.rounds_total,
                rounds_committed=row["committed_round"] if row else 0,
                current_round=CurrentRound.from_live(current) if current else None,
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
        page = self.reader.devices(online=online, profile=profile, limit=limit, offset=offset)
        current = self.current()
        return Page[DeviceOut](
            total=page.total,
            limit=limit,
            offset=offset,
            items=[DeviceOut.from_row(r, current) for r in page.items],
        )

    async def device(
        self, device_id: str, history: Annotated[int, Query(ge=0, le=10000)] = 100
    ) -> DeviceDetail:
        row = self.reader.device(device_id)
        if row is None:
            raise HTTPException(404, f"no device {device_id!r}")
        past = self.reader.device_history(device_id, history)
        base = DeviceOut.from_row(row, self.current())
        return DeviceDetail(**base.model_dump(), history=[DeviceRound(**r) for r in past])

    # jobs ---------------------------------------------------------------------------------
    async def list_jobs(self, limit: Limit = 100, offset: Offset = 0) -> Page[JobOut]:
        page = self.reader.jobs(limit=limit, offset=offset)
        return Page[JobOut](
            total=page.total,
            limit=limit,
            offset=offset,
            items=[self.job_out(r) for r in page.items],
        )

    async def get_job(self, job_id: str) -> JobDetail:
        row = self.job_row(job_id)
        last = self.reader.last_round(job_id)
        return JobDetail(
            **self.job_out(row).model_dump(),
            config=row["config"],
            rounds_by_state=self.reader.round_counts(job_id),
            last_round=RoundOut.from_row(last, self.current()) if last else None,
        )

    async def create_job(self, request: Request) -> JSONResponse:
        try:
            raw = parse_job_body(await request.body(), request.headers.get("content-type", ""))
            job = build_job(raw, self.state_dir)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from exc
        existing = self.reader.job(job.name)
        if existing is not None:
            raise HTTPException(
                409, f"job {job.name!r} already exists ({existing['status']}); pick another name"
            )
        try:
            await self.control.submit(job)
        except JobConflict as exc:
            raise HTTPException(409, str(exc)) from exc
        except FedgeError as exc:
            raise HTTPException(422, str(exc)) from exc
        row = self.reader.job(job.name)
        now = time.time()
        out = (
            self.job_out(row)
            if row
            else JobOut(
                id=job.name,
                fleet=job.fleet,
                status="starting",
                active=True,
                created=now,
                updated=now,
                rounds_total=job.rounds,
                committed_round=0,
                weights_sha=None,
                reason=None,
            )
        )
        return JSONResponse(
            out.model_dump(), status_code=201, headers={"Location": f"/v1/jobs/{job.name}"}
        )

    def _act(self, job_id: str, action: Callable[[str], None]) -> JobOut:
        """Apply a control action to the active job; 404/409 when there is none to act on."""
        row = self.job_row(job_id)
        if self.active(job_id) is None:
            raise HTTPException(409, f"job {job_id!r} is not running (status {row['status']})")
        try:
            action(job_id)
        except JobConflict as exc:
            raise HTTPException(409, str(exc)) from exc
        except JobNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        return self.job_out(self.job_row(job_id))

    async def pause(self, job_id: str) -> JobOut:
        out = self._act(job_id, self.control.pause)
        log.info("job %s paused through the API (takes effect at the next round)", job_id)
        return out

    async def resume(self, job_id: str) -> JobOut:
        out = self._act(job_id, self.control.resume)
        log.info("job %s resumed through the API", job_id)
        return out

    async def stop(self, job_id: str) -> JobOut:
        return self._act(job_id, self.control.stop)

    # rounds -------------------------------------------------------------------------------
    async def rounds(
        self,
        job_id: str,
        kind: str | None = None,
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 100,
        offset: Offset = 0,
    ) -> Page[RoundOut]:
        self.job_row(job_id)
        page = self.reader.rounds_page(job_id, kind=kind, state=state, limit=limit, offset=offset)
        current = self.current()
        return Page[RoundOut](
            total=page.total,
            limit=limit,
            offset=offset,
            items=[RoundOut.from_row(r, current) for r in page.items],
        )

    async def round_detail(self, job_id: str, rid: int) -> RoundDetail:
        self.job_row(job_id)
        row = self.reader.round_row(rid)
        if row is None or row["job_id"] != job_id:
            raise HTTPException(404, f"job {job_id!r} has no round with rid {rid}")
        base = RoundOut.from_row(row, self.current())
        participants = [
            Participant(**{k: p[k] for k in Participant.model_fields})
            for p in self.reader.participants(rid)
        ]
        return RoundDetail(
            **base.model_dump(),
            participants=participants,
            dropouts=[p.device_id for p in participants if p.status == "dropped"],
            timings=timings(self.reader.transitions(rid), row["state"] in ("committed", "failed")),
        )

    # model files --------------------------------------------------------------------------
    def _model_of(self, job_id: str, rnd: int | None) -> ModelSnapshot:
        """A job's model after round ``rnd`` (None: the latest); 404 if it has none."""
        self.job_row(job_id)
        if rnd is not None and self.reader.checkpoint_weights(job_id, rnd) is None:
            raise HTTPException(404, f"job {job_id!r} has no checkpoint for round {rnd}")
        try:
            return self.control.model(job_id, rnd)
        except JobNotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    async def model_bundle(self, job_id: str, round: AtRound = None) -> Response:
        model = await run_in_threadpool(self._model_of, job_id, round)
        art = model.artifact
        data = await run_in_threadpool(
            model_zip, art.manifest, art.model_bytes, model.weights, model.description
        )
        return download(data, "application/zip", f"{job_id}-model.zip")

    async def model_tflite(self, job_id: str, round: AtRound = None) -> Response:
        model = await run_in_threadpool(self._model_of, job_id, round)
        art = model.artifact
        data = await run_in_threadpool(bake_weights, art.model_bytes, art.manifest, model.weights)
        return download(data, "application/octet-stream", f"{job_id}.tflite")

    async def weights(
        self,
        job_id: str,
        round: AtRound = None,
        format: Literal["msgpack", "npz"] = "msgpack",
    ) -> Response:
        model = await run_in_threadpool(self._model_of, job_id, round)
        if format == "npz":
            return download(
                weights_npz(model.artifact.manifest, model.weights),
                "application/octet-stream",
                f"{job_id}-weights.npz",
            )
        return download(
            pack_weights(model.weights), "application/msgpack", f"{job_id}-weights.msgpack"
        )


def download(data: bytes, media_type: str, filename: str) -> Response:
    """A response the browser saves as ``filename``."""
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
