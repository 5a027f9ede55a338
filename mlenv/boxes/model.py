"""What a dev box is, what creating one asks for, and what every provider implements.

The provider's own records (container labels, EC2 tags) are the source of truth: a ``Box`` is read
from them each time, never from a local database, so deleting local state loses nothing.  A provider
is one module implementing ``Provider``; ``mlenv.boxes.provider(name, spec)`` finds it.
"""

from __future__ import annotations

import builtins
import getpass
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from mlenv import validate
from mlenv.errors import UsageError

if TYPE_CHECKING:
    from mlenv.execute import Executor

STATES = ("pending", "running", "stopping", "stopped", "terminated")

# Box names end up in container and volume names, ssh_config host aliases (mlenv-NAME), EC2 tags and
# file names: one strict shape (mlenv.validate), checked wherever a name is read (CLI, labels, tags).
BOX_NAME = validate.BOX_NAME

# Labels (docker) and tags (aws, as "mlenv:box" ...) that make a resource mlenv's and tie it to a box.
LABEL_BOX = "mlenv.box"
LABEL_OWNER = "mlenv.owner"
LABEL_PROJECT = "mlenv.project"
LABEL_LOCK = "mlenv.lock"
LABEL_TARGET = "mlenv.target"

# Where the watchdog keeps its files on every box, whatever the provider.
BOX_DIR = "/var/lib/mlenv"
KEEPALIVE_DIR = f"{BOX_DIR}/keepalive"
ACTIVITY_DIR = f"{BOX_DIR}/activity"  # an SSH login touches a file here (/etc/ssh/sshrc, see SSHRC)
WATCHDOG_LOG = f"{BOX_DIR}/watchdog.jsonl"
WATCHDOG_STATE = f"{BOX_DIR}/watchdog-state.json"
WATCHDOG_PATH = f"{BOX_DIR}/watchdog.py"

def sshrc(activity_dir: str = ACTIVITY_DIR) -> str:
    """/etc/ssh/sshrc on every box (or a login user's ~/.ssh/rc where mlenv cannot write /etc): sshd
    runs it (as the user) at each login, before the command or shell, so short `ssh box CMD` commands
    count as presence, not only terminals and busy CPUs.  The watchdog reads ``--activity-dir``."""
    import shlex

    return ("# Written by mlenv: an SSH login is activity for the box's idle watchdog.\n"
            f'touch {shlex.quote(activity_dir)}/"ssh-$(id -u)" 2>/dev/null || true\n'
            "# sshd leaves a forwarded X11 cookie to this file once it exists (sshd(8), SSHRC): hand it to xauth\n"
            'if [ -n "${DISPLAY:-}" ] && command -v xauth >/dev/null 2>&1 && read -r proto cookie; then\n'
            '    case $DISPLAY in localhost:*) display="unix:${DISPLAY#localhost:}" ;; *) display=$DISPLAY ;; esac\n'
            "    printf 'add %s %s %s\\n' \"$display\" \"$proto\" \"$cookie\" | xauth -q -\n"
            "fi\n")


SSHRC = sshrc()

# Defaults of `mlenv up` (and [devbox] idle / idle-connected / max-lifetime).
DEFAULT_IDLE_S = 30 * 60
DEFAULT_IDLE_CONNECTED_S = 3 * 3600
DEFAULT_MAX_LIFETIME_S = 12 * 3600


def validate_box_name(name: str) -> str:
    """``name`` when it is a valid box name, else a ``UsageError`` saying what is allowed."""
    problem = validate.box_name(name)
    if problem:
        raise UsageError(problem, hint="e.g. gpu1 or my-box")
    return name


def parse_duration(text: str | int | float, what: str = "duration") -> int:
    """Seconds in ``"30m"``, ``"2h"``, ``"1d"``, ``"45s"`` (the spec's duration format) or a number."""
    from mlenv.spec import parse_duration as parse_spec_duration

    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = int(text)
    else:
        parsed = parse_spec_duration(str(text).strip())
        if parsed is None:
            raise UsageError(f"invalid {what} {text!r}",
                             hint='write a number and a unit, e.g. "45s", "30m", "2h" or "1d"')
        seconds = parsed
    if seconds < 1:
        raise UsageError(f"{what} must be at least 1s, got {text!r}")
    return seconds


def format_duration(seconds: float | None) -> str:
    """``"1h05m"``, ``"4m10s"``, ``"12s"``; ``"-"`` for None."""
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def current_owner() -> str:
    """Who owns the boxes this process makes: ``user@host`` (the mlenv.owner label / mlenv:owner tag)."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (some containers): fall back to the uid
        import os

        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass
class Box:
    name: str
    provider: str
    state: str  # one of STATES
    target: str | None = None
    lock_hash: str | None = None
    created: float | None = None  # epoch seconds
    instance_type: str | None = None
    region: str | None = None
    price_per_hour: float | None = None
    idle_for_s: float | None = None  # as the watchdog last reported it
    stop_due_s: float | None = None  # seconds until the watchdog stops the box, when known
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str | None = None
    # "ssh-ed25519 AAAA..." lines learned through a trusted channel (docker exec, EC2 console output);
    # empty = unknown, then connect confirms on first use
    host_keys: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # additions beyond the contract
    project: str | None = None
    owner: str | None = None
    started: float | None = None  # epoch seconds of the last start (uptime and cost so far)

    def uptime_s(self, now: float | None = None) -> float | None:
        if self.state != "running" or self.started is None:
            return None
        return max(0.0, (now or time.time()) - self.started)

    def cost_so_far(self, now: float | None = None) -> float | None:
        """What the current run has cost (running time since the last start times $/hour)."""
        uptime = self.uptime_s(now)
        if self.price_per_hour is None:
            return None
        return round((uptime or 0.0) / 3600 * self.price_per_hour, 4)

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        data = asdict(self)
        data["uptime_s"] = self.uptime_s(now)
        data["cost_so_far"] = self.cost_so_far(now)
        return data


@dataclass
class UpRequest:
    name: str
    target: str | None = None
    idle_s: int = DEFAULT_IDLE_S
    idle_connected_s: int = DEFAULT_IDLE_CONNECTED_S
    max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S
    instance_type: str | None = None
    spot: bool = False
    dry_run: bool = False
    authorized_keys: list[str] = field(default_factory=list)  # public key lines allowed to log in
    # additions beyond the contract
    assume_yes: bool = False
    region: str | None = None
    disk_gb: int | None = None
    poll_s: int | None = None  # watchdog poll interval; None = the provider's default
    # False: return once the box is launched, before it is set up (aws: no host keys, no SSH, no
    # first-boot wait; a later `up` waits).  docker and ssh boxes are set up within `up` either way.
    wait: bool = True
    # options for the image build `up` runs when the image is missing (as `mlenv build` takes them):
    # base_image, network, build_args, ca_bundle_path
    build_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_box_name(self.name)

    def watchdog_args(self, *, action: str, poll_s: int) -> list[str]:
        """The watchdog's command-line settings for this request (every provider runs the same script)."""
        return [
            "--idle", str(self.idle_s),
            "--idle-connected", str(self.idle_connected_s),
            "--max-lifetime", str(self.max_lifetime_s),
            "--poll", str(self.poll_s or poll_s),
            "--log", WATCHDOG_LOG,
            "--state", WATCHDOG_STATE,
            "--keepalive-dir", KEEPALIVE_DIR,
            "--activity-dir", ACTIVITY_DIR,
            "--action", action,
        ]


@dataclass(frozen=True)
class Orphan:
    """A resource mlenv made that belongs to no live box (what `mlenv gc` lists and deletes)."""

    provider: str
    kind: str  # "container", "volume", "instance", "key-pair", "security-group", ...
    id: str
    box: str | None  # the box name its labels/tags name, if any
    detail: str = ""
    price_per_hour: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[str], None]  # one line per long step: "building the dev image", "SSH ready"


class Provider(Protocol):
    """One place boxes live.  A new provider is one module with a class implementing this."""

    name: str

    def plan(self, req: UpRequest) -> builtins.list[str]:
        """What ``up`` would do, as lines for ``--dry-run``; creates nothing."""
        ...

    def up(self, req: UpRequest, progress: Progress) -> Box:
        """Create the box, or find it by its labels/tags and start it when stopped (idempotent)."""
        ...

    def list(self) -> list[Box]: ...

    def get(self, name: str) -> Box | None: ...

    def stop(self, name: str) -> None: ...

    def start(self, name: str, progress: Progress) -> Box: ...

    def down(self, name: str) -> None:
        """Delete everything made for the box (instance/container, keys, volumes, ...)."""
        ...

    def orphans(self) -> builtins.list[Orphan]: ...

    def delete_orphans(self, orphans: builtins.list[Orphan]) -> None: ...

    def executor(self, box: Box) -> Executor:
        """Where commands on the (running) box run: the doctor's probe, keep-alives, `mlenv ssh`."""
        ...
