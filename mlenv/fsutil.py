"""Filesystem helpers shared by every command that writes files."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from mlenv.errors import ExitCode, MlenvError


class FileAccessError(MlenvError):
    """A file or folder mlenv must read or write cannot be used: permissions, a read-only folder, a
    directory where a file belongs, bytes that are not text.  Input-side, so exit 3 like a bad file."""

    exit_code = ExitCode.INVALID_INPUT


def _access_error(action: str, path: Path, exc: OSError) -> FileAccessError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = (f"make {path.parent} writable for this user, or run mlenv in a copy of the project"
                if action == "write" else f"make {path} readable for this user (chmod u+r)")
    elif exc.errno == errno.EISDIR:
        hint = f"{path} is a folder; move it out of the way"
    elif exc.errno == errno.ENOSPC:
        hint = "free some disk space"
    else:
        hint = None
    return FileAccessError(f"cannot {action} {path}: {exc.strerror or exc}", hint=hint)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is set-and-return,
    which would briefly loosen it for other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: str | bytes, *, mode: int | None = None,
                 private: bool = False) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half of it.

    Permissions: ``private`` (keys, tokens) is 0600 whatever the umask; an explicit ``mode`` is used
    as given; a replaced file keeps its mode; a new file gets 0666 minus the umask, like any tool.
    Any OS failure (read-only folder, a directory in the way, a full disk) is a ``FileAccessError``.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if private:
            os.chmod(tmp, 0o600)
        elif mode is not None:
            os.chmod(tmp, mode)
        elif path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise _access_error("write", path, exc) from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def read_bytes(path: str | os.PathLike) -> bytes:
    """An input file's bytes; a file mlenv cannot open (permissions, a folder in its place) is a
    ``FileAccessError``."""
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _access_error("read", path, exc) from None


def read_text(path: str | os.PathLike, *, encoding: str = "utf-8") -> str:
    """A text file mlenv reads as input.  A file it cannot open (permissions, a folder in its place) is a
    ``FileAccessError``; ``UnicodeDecodeError`` is left to the caller, which knows the file's role."""
    path = Path(path)
    try:
        return path.read_text(encoding=encoding)
    except OSError as exc:
        raise _access_error("read", path, exc) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(data) -> str:
    """sha256 of parsed TOML/JSON data in a canonical form (sorted keys, no whitespace): the same
    records give the same digest however the file was formatted.  Standard library only, because the
    `lock --check` fast path (mlenv/_entry.py) computes it without loading the rest of mlenv."""
    import json

    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
