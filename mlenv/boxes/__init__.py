"""Dev boxes: a machine (container, SSH host, EC2 instance) running the locked environment, with an
idle watchdog on board.

``provider(name, spec)`` returns the provider of that name.  Providers live in one module each and
are imported only when asked for (boto3, paramiko and docker load inside them), registered below as
``"module:Class"``; each class is constructed as ``Class(spec)`` (``spec`` may be None outside a
project: listing and deleting boxes needs no mlenv.toml, creating one does).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mlenv.boxes.model import (
    BOX_NAME,
    KEEPALIVE_DIR,
    STATES,
    WATCHDOG_LOG,
    Box,
    Orphan,
    Progress,
    Provider,
    UpRequest,
    current_owner,
    format_duration,
    parse_duration,
    validate_box_name,
)
from mlenv.errors import UsageError, did_you_mean

if TYPE_CHECKING:
    from mlenv.execute import Executor
    from mlenv.spec import Spec

__all__ = [
    "BOX_NAME", "KEEPALIVE_DIR", "PROVIDERS", "STATES", "WATCHDOG_LOG", "Box", "Orphan", "Progress", "Provider",
    "UpRequest", "current_owner", "default_provider_name", "format_duration", "hold", "parse_duration",
    "provider", "release", "validate_box_name",
]

PROVIDERS: dict[str, str] = {
    "docker": "mlenv.boxes.docker:DockerProvider",
    "ssh": "mlenv.boxes.ssh:SSHProvider",
    "aws": "mlenv.boxes.aws:AWSProvider",
}
DEFAULT_PROVIDER = "docker"


def provider(name: str, spec: Spec | None = None) -> Provider:
    """The provider called ``name``, set up from ``spec`` ([devbox], [image]) when there is one."""
    location = PROVIDERS.get(name)
    if location is None:
        raise UsageError(f"unknown box provider {name!r}",
                         hint=did_you_mean(name, PROVIDERS) or f"one of: {', '.join(PROVIDERS)}")
    module_name, _, class_name = location.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise UsageError(f"the {name} provider is not available in this mlenv") from None
    return getattr(module, class_name)(spec)


def default_provider_name(spec: Spec | None) -> str:
    """``[devbox] provider``, else docker (no cloud account needed)."""
    return (spec.devbox.provider if spec is not None else None) or DEFAULT_PROVIDER


# --- keep-alives: files on the box whose content is an expiry epoch --------------------------------


def _keepalive_path(holder: str, executor: Executor | None = None) -> str:
    if not BOX_NAME.fullmatch(holder):
        raise UsageError(f"invalid keep-alive holder {holder!r}", hint="use lowercase letters, digits and -")
    # a box without root (the ssh provider) keeps its files in its own folder: its executor says where
    return f"{getattr(executor, 'keepalive_dir', KEEPALIVE_DIR)}/{holder}"


def hold(executor: Executor, seconds: float, *, holder: str = "cli") -> float:
    """Keep the box up for ``seconds`` from now (the watchdog treats this as activity); returns the expiry.

    ``mlenv keepalive`` holds ``cli``; a sweep running on the box holds its own name and releases it.
    """
    import time

    from mlenv.execute import write_file

    expiry = time.time() + seconds
    write_file(executor, _keepalive_path(holder, executor), f"{expiry:.0f}\n".encode(), mode=0o666)
    return expiry


def release(executor: Executor, *, holder: str = "cli") -> None:
    executor.run(["rm", "-f", _keepalive_path(holder, executor)]).check("releasing the keep-alive")
