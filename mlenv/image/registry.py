"""Image references and registries: digests, ECR logins, pushes.

An unreachable registry while *looking up* a digest is not an error (callers keep the recorded pin
or the tag); a failed login or push is a ``ToolMissingError`` (exit 6): the service did not answer.
"""

from __future__ import annotations

import base64
import re
from typing import Callable

from mlenv.errors import ToolMissingError
from mlenv.image.engine import connect, docker_host, engine_call, short_error


def split_ref(ref: str) -> tuple[str, str, str | None]:
    """``(repository, tag, digest)`` of an image reference; the tag defaults to ``latest``."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        name, tag = ref, "latest" if digest is None else ""
    return name, tag, digest


def registry_host(repository: str) -> str | None:
    """The registry host of a repository name, or None for Docker Hub."""
    first = repository.split("/", 1)[0]
    if "/" in repository and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def registry_digest(ref: str, *, timeout: int = 20) -> str | None:
    """The registry's manifest digest for ``ref``, or None when no registry answers."""
    import docker

    connect()  # an unreachable engine is an error worth reporting, an unreachable registry is not
    try:
        client = docker.from_env(timeout=timeout)
        data = client.images.get_registry_data(ref, auth_config=_auth_for(ref))
    except Exception:  # noqa: BLE001 - any failure means "not resolvable now"; callers fall back
        return None
    return data.id


def digest_resolver(on_note: Callable[[str], None] | None = None) -> Callable[[str], str | None]:
    """``registry_digest`` that degrades to None (with one note) when no engine is reachable."""
    state: dict[str, bool] = {}

    def resolve(ref: str) -> str | None:
        if "engine" not in state:
            try:
                connect()
                state["engine"] = True
            except ToolMissingError:
                state["engine"] = False
                if on_note:
                    on_note(f"no Docker Engine at DOCKER_HOST={docker_host()}: base images stay unpinned")
        return registry_digest(ref) if state["engine"] else None

    return resolve


_ECR = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


def is_ecr(host: str | None) -> bool:
    return bool(host and _ECR.match(host))


_auth_cache: dict[str, dict] = {}


def _auth_for(ref: str) -> dict | None:
    host = registry_host(split_ref(ref)[0])
    if host is None or not is_ecr(host):
        return None
    if host not in _auth_cache:
        _auth_cache[host] = ecr_login(host)
    return _auth_cache[host]


def ecr_login(host: str) -> dict:
    """Docker credentials for an ECR registry from boto3's ``get_authorization_token``."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    match = _ECR.match(host)
    region = match.group(2) if match else None
    try:
        # boto3 itself honours AWS_ENDPOINT_URL_ECR (moto, VPC endpoints)
        client = boto3.client("ecr", region_name=region)
        response = client.get_authorization_token(registryIds=[match.group(1)] if match else [])
    except (BotoCoreError, ClientError) as exc:
        raise ToolMissingError(
            f"cannot log in to ECR registry {host}: {short_error(exc)}",
            hint="configure AWS credentials (aws configure / AWS_PROFILE) with ecr:GetAuthorizationToken",
        ) from None
    token = response["authorizationData"][0]["authorizationToken"]
    username, password = base64.b64decode(token).decode().split(":", 1)
    return {"username": username, "password": password, "serveraddress": f"https://{host}"}


def remote_exists(ref: str) -> bool:
    return registry_digest(ref) is not None


def push(ref: str) -> str:
    """Push a local tag; returns the digest the registry reports."""
    client = connect()
    repository, tag, _ = split_ref(ref)
    stream = engine_call(
        f"push of {ref}",
        lambda: client.images.push(repository, tag=tag, stream=True, decode=True, auth_config=_auth_for(ref)),
    )
    digest = None
    for event in stream:
        if "error" in event:
            raise ToolMissingError(f"push of {ref} failed: {event['error']}",
                             hint="check the registry address and your login (docker login / AWS credentials)")
        aux = event.get("aux") or {}
        digest = aux.get("Digest", digest)
    if not digest:
        raise ToolMissingError(f"push of {ref} reported no digest", hint="check the registry")
    return digest
