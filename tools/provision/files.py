"""Writing provisioning files atomically with explicit permissions (0600 for secrets)."""

from __future__ import annotations

import os
from pathlib import Path

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
PRIVATE_DIR_MODE = 0o700
PUBLIC_DIR_MODE = 0o755


def make_dir(path: Path, mode: int = PUBLIC_DIR_MODE) -> Path:
    """Create ``path`` (and parents) and set its mode, whatever the umask.

    Parameters
    ----------
    path : Path
        Directory to create.
    mode : int
        Permission bits the directory ends up with.

    Returns
    -------
    Path
        The same path.
    """
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def write_file(path: Path, data: bytes | str, mode: int = PUBLIC_MODE) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + rename) with permission ``mode``.

    The temporary file is created with ``mode`` already set, so a secret is never readable by
    others, not even for a moment.

    Parameters
    ----------
    path : Path
        Destination file; its parent directory must exist.
    data : bytes or str
        Content (str is encoded as UTF-8).
    mode : int
        Permission bits of the final file.

    Returns
    -------
    Path
        The same path.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def write_secret(path: Path, data: bytes | str) -> Path:
    """Write a private key, password or other secret with mode 0600."""
    return write_file(path, data, SECRET_MODE)
