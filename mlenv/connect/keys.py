"""This machine's SSH key for dev boxes: one ed25519 key per laptop, named after it.

Each machine a user connects from has its own key (never copied between laptops), so a lost laptop
is revoked by its name alone (``mlenv keys revoke NAME``) without touching the others.  The public
line carries the name as its comment, ``mlenv:<name>``, which is how ``keys ls`` and ``keys revoke``
recognise mlenv's keys in a box's ``authorized_keys``.

Key files live in ``<data dir>/keys/`` as ``<name>-<id>`` (private, 0600) and ``<name>-<id>.pub``;
``keys/current`` names the file new boxes get.  A rotation makes a new current key; the previous
one stays on disk only while a box still uses it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from mlenv.connect import paths
from mlenv.errors import MlenvError, SpecError
from mlenv.fsutil import atomic_write

COMMENT_PREFIX = "mlenv:"
KEY_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
# the key types a host or user key may have in the files mlenv writes
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


@dataclass(frozen=True)
class PublicKey:
    """One validated public key: safe to write as one line of known_hosts or authorized_keys."""

    type: str
    blob: str  # base64
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def key_name(self) -> str | None:
        """The laptop name of an mlenv key (``mlenv:<name>`` comment), else None."""
        if self.comment.startswith(COMMENT_PREFIX):
            name = self.comment[len(COMMENT_PREFIX):]
            return name if KEY_NAME.fullmatch(name) else None
        return None

    def line(self, *, comment: bool = True) -> str:
        return f"{self.type} {self.blob}" + (f" {self.comment}" if comment and self.comment else "")

    def same_key(self, other: PublicKey) -> bool:
        return (self.type, self.blob) == (other.type, other.blob)


def parse_public_key(line: str) -> PublicKey:
    """``"ssh-ed25519 AAAA... comment"`` checked by what it is: a known type, a blob that decodes to
    that type, a printable one-word comment.  Raises ``SpecError`` otherwise (exit 3)."""
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    parts = line.strip().split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES or not _BASE64.fullmatch(parts[1]) or "\n" in line.strip():
        raise SpecError(f"not an SSH public key line: {line.strip()[:80]!r}",
                        hint="expected e.g. 'ssh-ed25519 AAAAC3... comment'")
    try:
        load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
        blob_type = base64.b64decode(parts[1])[4:4 + len(parts[0])].decode()
    except (ValueError, UnicodeDecodeError):
        raise SpecError(f"invalid {parts[0]} key: its data does not decode") from None
    if blob_type != parts[0]:
        raise SpecError(f"the key data is a {blob_type!r} key, not {parts[0]!r}")
    comment = parts[2] if len(parts) > 2 and parts[2].isprintable() else ""
    return PublicKey(parts[0], parts[1], comment)


@dataclass(frozen=True)
class LocalKey:
    """A key pair of this machine: ``name`` (the laptop), the private file, the public line."""

    name: str
    private_path: Path
    public_line: str

    @property
    def public(self) -> PublicKey:
        return parse_public_key(self.public_line)

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    @property
    def public_path(self) -> Path:
        return self.private_path.with_name(self.private_path.name + ".pub")


def machine_key_name(hostname: str | None = None) -> str:
    """This machine's key name: its host name, lowercased, cut at the first dot, reduced to
    ``[a-z0-9-]`` (it is written into authorized_keys comments and file names)."""
    host = (hostname if hostname is not None else socket.gethostname()).split(".")[0].lower()
    cleaned = re.sub(r"[^a-z0-9-]+", "-", host).strip("-")
    cleaned = re.sub(r"^[^a-z]+", "", cleaned)[:63].rstrip("-")
    return cleaned or "laptop"


def generate(name: str) -> LocalKey:
    """A new ed25519 key pair for ``name``, written to the keys folder (private file 0600).
    It does not become the current key: see ``make_current``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not KEY_NAME.fullmatch(name):
        raise SpecError(f"invalid key name {name!r}: lowercase letters, digits and '-', starting with a letter")
    private = Ed25519PrivateKey.generate()
    private_bytes = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH).decode()
    key_id = hashlib.sha256(public.encode()).hexdigest()[:10]
    folder = paths.ensure_private_dir(paths.keys_dir())
    private_path = folder / f"{name}-{key_id}"
    public_line = f"{public} {COMMENT_PREFIX}{name}"
    atomic_write(private_path, private_bytes, private=True)
    key = LocalKey(name, private_path, public_line)
    atomic_write(key.public_path, public_line + "\n", mode=0o644)
    return key


def load(private_path: Path) -> LocalKey:
    """The key pair whose private file is ``private_path`` (its ``.pub`` beside it)."""
    public_path = private_path.with_name(private_path.name + ".pub")
    try:
        line = public_path.read_text().strip()
    except OSError as exc:
        raise MlenvError(f"cannot read the key {public_path}: {exc.strerror}",
                         hint="`mlenv keys ls` shows this machine's keys") from None
    public = parse_public_key(line)
    name = public.key_name or machine_key_name()
    return LocalKey(name, private_path, line)


def make_current(key: LocalKey) -> None:
    atomic_write(paths.keys_dir() / "current", key.private_path.name + "\n", private=True)


def local_key() -> LocalKey:
    """This machine's current key, created on first use."""
    current = paths.keys_dir() / "current"
    if current.is_file():
        file_name = current.read_text().strip()
        candidate = paths.keys_dir() / file_name
        if "/" not in file_name and candidate.is_file():
            return load(candidate)
    key = generate(machine_key_name())
    make_current(key)
    return key


def local_keys() -> list[LocalKey]:
    """Every key pair in the keys folder (the current one and retired ones still in use)."""
    folder = paths.keys_dir()
    if not folder.is_dir():
        return []
    found = []
    for public_path in sorted(folder.glob("*.pub")):
        private_path = public_path.with_name(public_path.name[: -len(".pub")])
        if private_path.is_file():
            found.append(load(private_path))
    return found


def delete(key: LocalKey) -> None:
    """Remove a retired key pair from this machine."""
    key.private_path.unlink(missing_ok=True)
    key.public_path.unlink(missing_ok=True)
