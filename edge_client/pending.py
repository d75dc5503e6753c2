"""The task in progress, kept on disk as the server sent it, so a restarted device resumes it."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fedge.edge_client.errors import ProtocolError
from fedge.edge_client.protocol import messages as m
from fedge.edge_client.protocol.envelope import SERVER_ID, unpack

log = logging.getLogger("fedge.device")
PENDING_TASK = "pending_task.msg"  # the envelope of the task in progress, as the server sent it


@dataclass(frozen=True)
class PendingTask:
    """A task to resume, with the job and round its envelope named."""

    task: m.Task
    job_id: str | None
    round_id: int | None


class PendingTaskFile:
    """The signed envelope of the task in progress, in the device's state dir.

    Kept as it arrived (not re-encoded), so a resume checks the server's signature again.
    """

    def __init__(self, state_dir: Path, device_id: str):
        self.path = state_dir / PENDING_TASK
        self.device_id = device_id

    def save(self, envelope: bytes) -> None:
        """Keep the task's envelope as the server sent it, to resume the task after a restart."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(envelope)
        os.replace(tmp, self.path)

    def load(self) -> PendingTask | None:
        """The task to resume; None (and the file gone) if it is unreadable or past its deadline."""
        if not self.path.exists():
            return None
        try:
            envelope = unpack(self.path.read_bytes(), SERVER_ID, check_time=False)
            task = m.parse(envelope)
        except ProtocolError as exc:
            log.warning("device %s: dropping unreadable pending task: %s", self.device_id, exc)
            self.clear()
            return None
        if not isinstance(task, m.Task) or task.deadline < time.time():
            self.clear()
            return None
        return PendingTask(task, envelope.job_id, envelope.round_id)

    def clear(self) -> None:
        """Forget the task: it ran to its end or will never be resumed."""
        self.path.unlink(missing_ok=True)
