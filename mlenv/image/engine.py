"""The Docker Engine, through the ``docker`` SDK.

Every failure to reach or use the engine is a ``ToolMissingError`` (exit 6): scripts must be able
to tell "mlenv could not look" from "the environment drifted" by the exit code alone.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

from mlenv.errors import ToolMissingError

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
T = TypeVar("T")


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def connect():
    """A connected ``docker.DockerClient``; an unreachable engine is one ``ToolMissingError``."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:  # pragma: no cover - a dependency of mlenv
        raise ToolMissingError("the docker Python SDK is not installed", hint="pip install docker") from None
    try:
        # a short timeout for the reachability check (a black-holed tcp:// host must not hang),
        # a long one for real work (pushes, big images)
        client = docker.from_env(timeout=10)
        client.ping()
        client.api.timeout = 600
    except (DockerException, OSError) as exc:
        raise ToolMissingError(
            f"cannot reach the Docker Engine at DOCKER_HOST={docker_host()} ({short_error(exc)})",
            hint="start dockerd, or set DOCKER_HOST to the socket of a running engine",
        ) from None
    return client


def short_error(exc: BaseException) -> str:
    """The first line of an exception's text, cut to a readable length."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


def engine_call(what: str, call: Callable[[], T]) -> T:
    """Run one SDK call; engine errors become ``ToolMissingError``s instead of tracebacks."""
    from docker.errors import APIError, DockerException
    from requests.exceptions import ConnectionError as RequestsConnectionError

    try:
        return call()
    except APIError as exc:
        raise ToolMissingError(f"{what} failed: the Docker Engine answered {exc.explanation or exc}") from None
    except (RequestsConnectionError, DockerException) as exc:
        raise ToolMissingError(
            f"lost the Docker Engine at DOCKER_HOST={docker_host()} during {what} ({short_error(exc)})",
            hint="check that dockerd is running",
        ) from None


def local_image(ref: str):
    """The local image for ``ref``, or None."""
    from docker.errors import ImageNotFound

    client = connect()
    try:
        return client.images.get(ref)
    except ImageNotFound:
        return None
