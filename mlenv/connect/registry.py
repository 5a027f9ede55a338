"""The boxes this machine connects to: validated values the ssh config is rendered from.

One JSON file beside mlenv's ssh config.  Every value is checked by what it is when a record is
made *and* when the file is read back (a hand-edited file is as untrusted as a spec), so nothing
that reaches the ssh config can carry a newline, a space or a quote that would add an option.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlenv import validate
from mlenv.connect import paths
from mlenv.connect.hostkeys import jump_name
from mlenv.connect.session import Endpoint
from mlenv.errors import SpecError
from mlenv.fsutil import atomic_write

# ssh logs in as this account: a POSIX name; unlike an image user, root is allowed here
_SSH_USER = validate.POSIX_USER
_PROVIDER = re.compile(r"[a-z][a-z0-9-]{0,30}")
_UNSAFE_PATH = re.compile(r'[\x00-\x1f\x7f"]')


def check_path(value: str, what: str) -> str:
    """An absolute path that can be written double-quoted into ssh_config (no quote, no control char,
    no ``${``: ssh reads that as an environment variable in IdentityFile and has no escape for it)."""
    if not isinstance(value, str) or not value.startswith("/") or _UNSAFE_PATH.search(value) or "${" in value:
        raise SpecError(f"{what} {value!r} must be an absolute path without quotes, control characters or "
                        "'${' (ssh would read it as a variable)")
    return value


@dataclass
class Record:
    name: str
    provider: str
    host: str
    port: int
    user: str
    identity: str  # the private key file (absolute path)
    start_on_connect: bool = False
    workdir: str | None = None
    # where the box's sshd reads the login user's keys (a provider may keep them elsewhere)
    authorized_keys: str = "~/.ssh/authorized_keys"
    extra: dict = field(default_factory=dict)
    # reached through this SSH server (ProxyJump), e.g. a container's sshd on a machine's loopback
    jump_host: str | None = None
    jump_port: int | None = None
    jump_user: str | None = None
    # the key the jump host authorizes, when it is no longer ``identity`` (``keys rotate`` of the box)
    jump_identity: str | None = None

    def __post_init__(self) -> None:
        for check, value in ((validate.box_name, self.name), (validate.hostname, self.host)):
            problem = check(value)
            if problem:
                raise SpecError(problem)
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536:
            raise SpecError(f"invalid SSH port {self.port!r} for box {self.name!r}: 1-65535")
        if not isinstance(self.user, str) or not _SSH_USER.fullmatch(self.user):
            raise SpecError(f"invalid SSH user {self.user!r} for box {self.name!r}")
        if not isinstance(self.provider, str) or not _PROVIDER.fullmatch(self.provider):
            raise SpecError(f"invalid provider name {self.provider!r} for box {self.name!r}")
        check_path(self.identity, "the key file")
        if self.workdir is not None:
            check_path(self.workdir, "the box's work folder")
        keys_file = self.authorized_keys
        check_path(keys_file[1:] if isinstance(keys_file, str) and keys_file.startswith("~/") else keys_file,
                   "the box's authorized_keys file")
        self.start_on_connect = bool(self.start_on_connect)
        if self.jump_host is not None:
            problem = validate.hostname(self.jump_host)
            if problem:
                raise SpecError(f"jump host of box {self.name!r}: {problem}")
            port = self.jump_port
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise SpecError(f"invalid jump port {port!r} for box {self.name!r}: 1-65535")
            if not isinstance(self.jump_user, str) or not _SSH_USER.fullmatch(self.jump_user):
                raise SpecError(f"invalid jump user {self.jump_user!r} for box {self.name!r}")
        if self.jump_identity is not None:
            check_path(self.jump_identity, "the jump host's key file")

    @property
    def jump(self) -> Endpoint | None:
        if self.jump_host is None or self.jump_port is None or self.jump_user is None:
            return None
        return Endpoint(jump_name(self.name), self.jump_host, self.jump_port, self.jump_user,
                        Path(self.jump_identity or self.identity))

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, self.host, self.port, self.user, Path(self.identity), self.jump)


def load() -> dict[str, Record]:
    try:
        raw = json.loads(paths.registry().read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise SpecError(f"{paths.registry()}: not valid JSON ({exc})",
                        hint="delete it; `mlenv ssh-config` rewrites it from the boxes mlenv knows") from None
    boxes = raw.get("boxes", []) if isinstance(raw, dict) else None
    if not isinstance(boxes, list):
        raise SpecError(f'{paths.registry()}: expected {{"boxes": [...]}}',
                        hint="delete it; `mlenv ssh-config` rewrites it from the boxes mlenv knows")
    records = {}
    for item in boxes:
        try:
            record = Record(**item)
        except TypeError as exc:
            raise SpecError(f"{paths.registry()}: unexpected entry ({exc})") from None
        except SpecError as exc:  # a hand-edited or copied file: say which file holds the bad value
            raise SpecError(f"{paths.registry()}: {exc.message}",
                            hint="correct or delete that entry; `mlenv up NAME` registers a box again") from None
        records[record.name] = record
    return records


def save(records: dict[str, Record]) -> None:
    paths.ensure_private_dir(paths.mlenv_ssh_dir())
    data = {"boxes": [asdict(records[name]) for name in sorted(records)]}
    atomic_write(paths.registry(), json.dumps(data, indent=2, sort_keys=True) + "\n", private=True)


def get(name: str) -> Record | None:
    return load().get(name)
