"""The sweep's output folder: a local path (atomic writes) or a URL papermill can write (its I/O handlers)."""

from __future__ import annotations

import re
from pathlib import Path

from mlenv.errors import ToolMissingError, UsageError
from mlenv.fsutil import FileAccessError


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def location(self, name: str) -> str:
        return str(self.root / name)

    def read_text(self, name: str) -> str | None:
        try:
            return (self.root / name).read_text(encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError):
            return None

    def check(self) -> None:
        """Fail before any run when the outputs could not be written (a file in the way, no write access)."""
        import tempfile

        existing = next(folder for folder in (self.root, *self.root.parents) if folder.exists())
        if not existing.is_dir():
            raise UsageError(f"output {self.root}: {existing} is a file, not a folder",
                             hint="pick another --output folder")
        try:  # the deepest folder that exists must take a file (nothing is created before the runs)
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".mlenv-write-check-"):
                pass
        except OSError as exc:
            raise FileAccessError(f"cannot write the results to {self.root}: {existing}: {exc.strerror or exc}",
                                  hint="pick a writable folder with -o/--output (or fix its permissions)") from None

    def write_text(self, name: str, text: str) -> None:
        from mlenv.fsutil import atomic_write

        atomic_write(self.root / name, text)  # an unwritable folder is fsutil's FileAccessError (exit 3)

    def __str__(self) -> str:
        return str(self.root)


URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and bool(URL.match(location))


def _handlers() -> list[tuple[str, object]]:
    """papermill's I/O handlers by URL prefix (its own and those other packages register)."""
    from papermill.iorw import papermill_io

    return [(scheme, handler) for scheme, handler in papermill_io._handlers if "://" in scheme]


def handler_for(location: str, *, writing: bool):
    """papermill's handler for ``location``; any other scheme is refused here, before a run starts."""
    from papermill.iorw import GithubHandler

    handlers = _handlers()
    handler = next((handler for scheme, handler in handlers if location.startswith(scheme)), None)
    if handler is not None and not (writing and isinstance(handler, GithubHandler)):  # papermill reads GitHub only
        return handler
    what = "results folder" if writing else "notebook"
    schemes = sorted({scheme.split("://")[0] + "://" for scheme, handler in handlers
                      if not (writing and isinstance(handler, GithubHandler))})
    place = "GitHub" if handler is not None else location.split("://")[0] + "://"
    raise UsageError(f"{location.rstrip('/')}: papermill cannot {'write to' if writing else 'read from'} {place}, "
                     f"so the {what} cannot be there", hint=f"use a local path or one of {', '.join(schemes)}")


def _store_error(exc: Exception, where: str) -> ToolMissingError:
    from papermill.exceptions import PapermillOptionalDependencyException

    if isinstance(exc, PapermillOptionalDependencyException):  # says which `pip install papermill[...]`
        command = re.search(r"pip install (\S+)", str(exc))
        return ToolMissingError(f"cannot use {where}: {exc}",
                                hint=f"pip install '{command.group(1)}'" if command else None)
    hint = ("check the bucket exists and your AWS credentials / AWS_ENDPOINT_URL" if where.startswith("s3://")
            else "check the address and your credentials for it")
    return ToolMissingError(f"cannot use {where}: {type(exc).__name__}: {str(exc)[:300]}", hint=hint)


def _not_found(exc: Exception) -> bool:
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")
    return isinstance(exc, FileNotFoundError) or code in ("NoSuchKey", "404", "NotFound")


class RemoteStore:
    """Files under a URL prefix, written through papermill's I/O handler for its scheme (s3://, gs://,
    abs://, adl://, hdfs://, http(s)://, and handlers other packages register).  Each file is one write,
    so readers never see half of one."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.handler = handler_for(self.root + "/", writing=True)

    def location(self, name: str) -> str:
        return f"{self.root}/{name}"

    def write_text(self, name: str, text: str) -> None:
        try:
            self.handler.write(text, self.location(name))
        except Exception as exc:
            raise _store_error(exc, self.location(name)) from None

    def read_text(self, name: str) -> str | None:
        try:
            text = self.handler.read(self.location(name))
        except Exception as exc:
            if _not_found(exc):
                return None
            raise _store_error(exc, self.location(name)) from None
        return text.decode("utf-8") if isinstance(text, bytes) else text

    def check(self) -> None:
        """Before any run: the store's library is installed and the place answers."""
        try:
            self.handler.listdir(self.root + "/")
        except Exception as exc:
            if not _not_found(exc):
                raise _store_error(exc, self.root) from None

    def __str__(self) -> str:
        return self.root


class HttpStore(RemoteStore):
    """``http(s)://``: papermill PUTs notebooks as JSON; the CSV and the report go up as they are, and a
    missing file reads as missing (papermill's handler would return the server's error page)."""

    def write_text(self, name: str, text: str) -> None:
        if name.endswith((".ipynb", ".json")):
            return super().write_text(name, text)
        import requests

        content_type = "text/html; charset=utf-8" if name.endswith(".html") else "text/csv; charset=utf-8"
        try:
            requests.put(self.location(name), data=text.encode(), headers={"Content-Type": content_type},
                         timeout=60).raise_for_status()
        except requests.RequestException as exc:
            raise _store_error(exc, self.location(name)) from None

    def read_text(self, name: str) -> str | None:
        import requests

        try:
            response = requests.get(self.location(name), timeout=60)
        except requests.RequestException as exc:
            raise _store_error(exc, self.location(name)) from None
        return response.text if response.ok else None

    def check(self) -> None:
        import requests

        try:  # any answer will do (a PUT-only server may refuse a GET): the server is there
            requests.head(self.root + "/", timeout=10)
        except requests.RequestException as exc:
            raise _store_error(exc, self.root) from None


Store = LocalStore | RemoteStore  # where a sweep's outputs and results files go


def read_notebook_text(location: str) -> str:
    """A notebook at a URL, read through papermill's handler for its scheme."""
    handler = handler_for(location, writing=False)
    try:
        text = handler.read(location)
    except Exception as exc:
        if _not_found(exc):
            raise UsageError(f"notebook {location} does not exist", hint="check the address") from None
        raise _store_error(exc, location) from None
    return text.decode("utf-8") if isinstance(text, bytes) else text


def open_store(output: str | Path) -> Store:
    text = str(output)
    if is_url(text):
        return HttpStore(text) if text.startswith(("http://", "https://")) else RemoteStore(text)
    return LocalStore(Path(text))
