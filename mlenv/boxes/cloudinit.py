"""First-boot user-data for cloud boxes, and reading the host keys it prints back from the console.

The user-data is a shell script (cloud-init runs ``#!`` user-data as is), rendered from
``templates/cloud-init.sh.j2``: SSH host keys to the console first (between markers, so the client
pins them before it ever connects), then the idle watchdog as a systemd service (with
``/etc/ssh/sshrc``, so SSH logins count as activity), then the locked environment (the image by
digest, or the lock synced into a venv).  The same script runs unchanged in a plain container, which
is how it is tested.
"""

from __future__ import annotations

import base64
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlenv.errors import MlenvError, UsageError

KEYS_BEGIN = "-----BEGIN MLENV HOST KEYS-----"
KEYS_END = "-----END MLENV HOST KEYS-----"
READY_MARKER = "-----MLENV BOX READY-----"
FAILED_MARKER = "-----MLENV BOX SETUP FAILED-----"
# The first-boot script's whole output, also kept on the box (0644): `mlenv up` follows it over SSH
SETUP_LOG = "/var/log/mlenv-setup.log"
SAY_PREFIX = "mlenv: "  # the script's `say` lines: its progress, as `up` prints it
# cloud-init's own block (cc_keys_to_console), printed on every Ubuntu/Debian/Amazon Linux boot
CLOUD_INIT_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
CLOUD_INIT_END = "-----END SSH HOST KEY KEYS-----"
# EC2 refuses user-data over 16 KiB (before base64); cloud-init unpacks gzip itself
USER_DATA_LIMIT = 16 * 1024
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_KEY_LINE = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, HOST_KEY_TYPES)) + r") (AAAA[A-Za-z0-9+/]+={0,2})")
_SAFE_ARG = re.compile(r"[A-Za-z0-9_./:=-]+")  # watchdog arguments go into a systemd unit unquoted
# The AWS CLI the box logs in to ECR with when its AMI has none (Ubuntu's has none): v1 from PyPI,
# which reads the instance role from IMDS like every AWS SDK; bump deliberately.
AWSCLI_VERSION = "1.45.11"


@dataclass
class UserData:
    """Everything the first-boot script needs; ``render`` validates each value before it is written."""

    box: str
    project: str
    user: str  # the login user of the AMI (ubuntu, ec2-user, ...)
    watchdog: bytes  # templates/watchdog.py
    watchdog_args: list[str]
    box_dir: str
    keepalive_dir: str
    watchdog_path: str
    authorized_keys: list[str] = field(default_factory=list)
    # the image by digest when [image] registry is set ...
    image_ref: str | None = None
    gpu: bool = False
    # ... pulled with an ECR token of this region (the box's instance role asks ECR for it)
    ecr_region: str | None = None
    # ... otherwise the lock, synced into a venv
    pylock_name: str | None = None
    pylock: bytes | None = None
    python: str | None = None
    groups: list[str] = field(default_factory=list)


def _gz_b64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data, mtime=0)).decode()


def check_public_key(line: str) -> str:
    """An OpenSSH public key line, checked by what it is and rewritten from its parts (type, key, a
    one-word comment): nothing else reaches authorized_keys."""
    from mlenv.connect.keys import parse_public_key

    return parse_public_key(str(line)).line()


def render(data: UserData) -> str:
    """The user-data script text.  Every value is validated here and shell-quoted by the template."""
    from mlenv import validate

    problems = [validate.box_name(data.box), validate.name(data.project)]
    if not validate.POSIX_USER.fullmatch(data.user or ""):
        problems.append(f"invalid login user {data.user!r}")
    for arg in data.watchdog_args:
        if not _SAFE_ARG.fullmatch(arg):
            problems.append(f"unsafe watchdog argument {arg!r}")
    for path in (data.box_dir, data.keepalive_dir, data.watchdog_path):
        if not re.fullmatch(r"/[A-Za-z0-9_./-]+", path) or ".." in path:
            problems.append(f"unsafe path {path!r}")
    if data.image_ref:
        problems.append(validate.image_reference(data.image_ref))
        if "@sha256:" not in data.image_ref:
            problems.append(f"image {data.image_ref!r} is not pinned by digest")
        if data.ecr_region is not None and not validate.AWS_REGION.fullmatch(data.ecr_region):
            problems.append(f"invalid AWS region {data.ecr_region!r}")
    else:
        if data.pylock is None or not data.pylock_name or not data.python:
            raise MlenvError("user-data needs the image (by digest) or the lock to sync")
        problems += [validate.name(data.pylock_name), *(validate.name(group) for group in data.groups)]
        if not re.fullmatch(r"3\.\d{1,2}(\.\d{1,2})?", data.python):
            problems.append(f"invalid Python version {data.python!r}")
    problems = [problem for problem in problems if problem]
    if problems:
        raise UsageError(f"cannot write the box's user-data: {problems[0]}")
    keys = [check_public_key(key) for key in data.authorized_keys]

    from mlenv.boxes.docker import container_name
    from mlenv.boxes.model import ACTIVITY_DIR, SSHRC
    from mlenv.image.registry import registry_host, split_ref
    from mlenv.render import UV_VERSION, render_template

    host = registry_host(split_ref(data.image_ref)[0]) if data.image_ref else None
    if data.ecr_region and host is None:
        raise UsageError(f"cannot write the box's user-data: {data.image_ref!r} names no registry to log in to")
    return render_template(
        "cloud-init.sh.j2",
        box=data.box,
        project=data.project,
        user=data.user,
        authorized_keys=keys,
        box_dir=data.box_dir,
        keepalive_dir=data.keepalive_dir,
        watchdog_path=data.watchdog_path,
        activity_dir=ACTIVITY_DIR,
        sshrc=SSHRC,  # the docker provider's, so every box counts SSH logins the same way
        watchdog_gz_b64=_gz_b64(data.watchdog),
        watchdog_args=data.watchdog_args,
        image_ref=data.image_ref,
        container=container_name(data.box),  # the docker provider's name for a box's container
        registry_host=host,
        ecr_region=data.ecr_region if data.image_ref else None,
        awscli_version=AWSCLI_VERSION,
        gpu=data.gpu,
        pylock_name=data.pylock_name,
        pylock_gz_b64=_gz_b64(data.pylock) if data.pylock is not None else None,
        python=data.python,
        groups=data.groups,
        uv_version=UV_VERSION,
        keys_begin=KEYS_BEGIN,
        keys_end=KEYS_END,
        ready_marker=READY_MARKER,
        failed_marker=FAILED_MARKER,
        setup_log=SETUP_LOG,
        say_prefix=SAY_PREFIX,
    )


def pack(script: str) -> bytes:
    """The user-data bytes EC2 gets: the script, gzipped when it would not fit otherwise."""
    raw = script.encode()
    if len(raw) <= USER_DATA_LIMIT:
        return raw
    packed = gzip.compress(raw, mtime=0)
    if len(packed) > USER_DATA_LIMIT:
        raise UsageError(
            f"the box's first-boot script is {len(packed)} bytes gzipped; EC2 accepts {USER_DATA_LIMIT}",
            hint="the lock is too large to ship in user-data: set [image] registry and `mlenv build --push`, "
                 "so the box pulls the image instead",
        )
    return packed


def unpack(user_data: bytes) -> str:
    return (gzip.decompress(user_data) if user_data[:2] == b"\x1f\x8b" else user_data).decode()


# --- reading the console --------------------------------------------------------------------------


def _is_whole_key(kind: str, blob: str) -> bool:
    """Whether ``kind blob`` is a complete public key of that type (a line cut short by interleaved
    console output still decodes as base64, but not as a key)."""
    from mlenv.connect.keys import parse_public_key
    from mlenv.errors import SpecError

    try:
        parse_public_key(f"{kind} {blob}")
        return True
    except SpecError:
        return False


def _blocks(text: str, begin: str, end: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] | None = None  # the lines of the block being read
    for line in text.splitlines():
        if begin in line:
            current = []
        elif end in line:
            if current is not None:
                blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def parse_host_keys(console: str) -> list[str]:
    """Host public keys (``"ssh-ed25519 AAAA..."``) printed between markers on a box's console.

    mlenv's own block comes first; cloud-init's ``SSH HOST KEY KEYS`` block is the fallback.  Lines may
    carry console prefixes (kernel timestamps, ``cloud-init[123]:``) and CRLF endings; keys outside a
    block (authorized-key tables, user output) are ignored.  Two blocks naming different keys of the
    same type is an error: the console cannot be trusted then.
    """
    console = console.replace("\r", "")
    keys: dict[str, str] = {}
    for begin, end in ((KEYS_BEGIN, KEYS_END), (CLOUD_INIT_BEGIN, CLOUD_INIT_END)):
        for block in _blocks(console, begin, end):
            for line in block:
                match = _KEY_LINE.search(line)
                if not match or not _is_whole_key(*match.groups()):
                    continue  # a line mangled by interleaved console output
                kind, blob = match.groups()
                if keys.setdefault(kind, blob) != blob:
                    raise MlenvError(
                        f"the console output shows two different {kind} host keys",
                        hint="something else wrote to the console; check the instance before connecting "
                             "(`mlenv down` it if you did not expect this)",
                    )
        if keys:
            break
    return [f"{kind} {keys[kind]}" for kind in HOST_KEY_TYPES if kind in keys]


def setup_state(console: str) -> str | None:
    """"ready" or "failed" once the first-boot script has finished, else None."""
    if FAILED_MARKER in console:
        return "failed"
    if READY_MARKER in console:
        return "ready"
    return None


def said(output: str) -> list[str]:
    """The progress the first-boot script reported in ``output`` (its ``say`` lines, without the prefix)."""
    return [line[len(SAY_PREFIX):].strip() for line in output.replace("\r", "").splitlines()
            if line.startswith(SAY_PREFIX)]


def last_lines(output: str, count: int = 15) -> list[str]:
    """The last non-blank lines of a console or setup log: what a failure message quotes (the failing
    command's stderr comes right before the failure marker)."""
    return [line.rstrip() for line in output.replace("\r", "").splitlines() if line.strip()][-count:]


def watchdog_source() -> bytes:
    """templates/watchdog.py as the first-boot script carries it: without comments and docstrings.

    EC2 takes 16 KB of user-data, gzipped; what the watchdog does not take is room for the lock (about
    3 KB more of it).  The code itself is unchanged: it is parsed and written back by ``ast``."""
    import ast

    from mlenv.render import templates_dir

    path = Path(templates_dir()) / "watchdog.py"
    if not path.is_file():
        raise MlenvError(f"{path} is missing from this mlenv installation")
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and ast.get_docstring(node, clean=False) is not None):
            node.body = node.body[1:] or [ast.Pass()]
    return (ast.unparse(tree) + "\n").encode()

