"""Writing the bundle tar.gz: every entry with an explicit mode, root-owned, written atomically."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

DIR_MODE = 0o755
PRIVATE_DIR_MODE = 0o700
BUNDLE_MODE = 0o600  # the archive holds private keys


@dataclass(frozen=True)
class Entry:
    """One file of the bundle: its path inside the top folder, where its bytes come from, mode."""

    name: str
    mode: int
    data: bytes | None = None
    source: Path | None = None

    def size(self) -> int:
        return len(self.data) if self.data is not None else self._source().stat().st_size

    def open(self) -> io.BufferedIOBase:
        if self.data is not None:
            return io.BytesIO(self.data)
        return self._source().open("rb")

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.open() as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def _source(self) -> Path:
        assert self.source is not None, f"{self.name}: an entry needs data or a source file"
        return self.source


def checksums(entries: list[Entry]) -> bytes:
    """``SHA256SUMS`` in the format ``sha256sum --check`` reads."""
    return "".join(f"{e.sha256()}  {e.name}\n" for e in entries).encode()


def _info(name: str, mode: int, kind: bytes, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_tar_gz(out: Path, top: str, entries: list[Entry],
                 private_dirs: frozenset[str] = frozenset()) -> Path:
    """Write ``entries`` under the folder ``top`` into the tar.gz ``out`` (mode 0600).

    Parameters
    ----------
    out : Path
        Archive to write; replaced atomically.
    top : str
        Name of the single top-level folder.
    entries : list of Entry
        Files with their modes; parent folders are added with mode 0755.
    private_dirs : frozenset of str
        Folders (relative to ``top``) that get mode 0700 instead.

    Returns
    -------
    Path
        ``out``.
    """
    now = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, BUNDLE_MODE)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            dirs = sorted({str(p) for e in entries for p in Path(e.name).parents} - {"."})
            tar.addfile(_info(top, DIR_MODE, tarfile.DIRTYPE, 0, now))
            for folder in dirs:
                mode = PRIVATE_DIR_MODE if folder in private_dirs else DIR_MODE
                tar.addfile(_info(f"{top}/{folder}", mode, tarfile.DIRTYPE, 0, now))
            for entry in entries:
                with entry.open() as fh:
                    info = _info(f"{top}/{entry.name}", entry.mode, tarfile.REGTYPE, entry.size(),
                                 now)
                    tar.addfile(info, fh)
        os.chmod(tmp, BUNDLE_MODE)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
