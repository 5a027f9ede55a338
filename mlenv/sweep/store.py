"""The sweep's output folder: a local path (atomic writes) or ``s3://bucket/prefix`` (papermill's S3 I/O)."""

from __future__ import annotations

from pathlib import Path

from mlenv.errors import SweepError, ToolMissingError, UsageError


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
            raise SweepError(f"cannot write the results to {self.root}: {existing}: {exc.strerror or exc}",
                             hint="pick a writable folder with -o/--output (or fix its permissions)") from None

    def write_text(self, name: str, text: str) -> None:
        from mlenv.fsutil import atomic_write

        try:
            atomic_write(self.root / name, text)
        except OSError as exc:
            raise SweepError(f"cannot write {self.root / name}: {exc.strerror or exc}",
                             hint="pick a writable folder with -o/--output (or fix its permissions)") from None

    def __str__(self) -> str:
        return str(self.root)


class S3Store:
    """Objects under an ``s3://`` prefix; one PUT per file, so readers never see half of one."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def location(self, name: str) -> str:
        return f"{self.root}/{name}"

    def write_text(self, name: str, text: str) -> None:
        from papermill.iorw import S3Handler

        try:
            S3Handler.write(text, self.location(name))
        except Exception as exc:
            raise _s3_error(exc, self.location(name)) from None

    def read_text(self, name: str) -> str | None:
        from papermill.iorw import S3Handler

        try:
            return S3Handler.read(self.location(name))
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise _s3_error(exc, self.location(name)) from None

    def check(self) -> None:
        from papermill.iorw import S3Handler

        try:
            S3Handler.listdir(self.root + "/")
        except Exception as exc:
            raise _s3_error(exc, self.root) from None

    def __str__(self) -> str:
        return self.root


def _s3_error(exc: Exception, where: str) -> ToolMissingError:
    return ToolMissingError(f"cannot use {where}: {type(exc).__name__}: {str(exc)[:300]}",
                            hint="check the bucket exists and your AWS credentials / AWS_ENDPOINT_URL")


def open_store(output: str | Path):
    text = str(output)
    if text.startswith("s3://"):
        return S3Store(text)
    return LocalStore(Path(text))
