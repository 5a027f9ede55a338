"""A real PEP 503 package index for tests: tiny wheels built on the fly, served over loopback HTTP.

    def test_x(local_index):
        local_index.add("tinylib", "1.0", requires=["tinydep>=1"])
        local_index.url   # http://127.0.0.1:PORT/simple

``index_server`` starts further, independent indexes.  ``torch_index`` is one laid out like the
PyTorch indexes (``/whl/cpu``, ``/whl/cu124``, ``/whl/cu128``: tiny torch-family wheels with local
versions) beside a PyPI-like ``/simple`` holding plain torch and ``nvidia-*-cu12``/``-cu13`` runtimes.
Pages are generated per request, so packages added later (a new release) show up on the next lock;
responses say ``no-cache`` so uv revalidates instead of trusting a stale listing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheel(
    folder: Path,
    name: str,
    version: str,
    *,
    requires: list[str] | tuple[str, ...] = (),
    tag: str = "py3-none-any",
    requires_python: str | None = None,
    module: str | None = None,
) -> Path:
    """Write a minimal, installable wheel (one module, ``__version__`` set) and return its path;
    ``module`` names the module (default: the distribution's name)."""
    dist = re.sub(r"[-.]+", "_", name)
    module = module or dist.lower()
    dist_info = f"{dist}-{version}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}")
    metadata += [f"Requires-Dist: {requirement}" for requirement in requires]
    files = {
        f"{module}/__init__.py": f'__version__ = "{version}"\n',
        f"{dist_info}/METADATA": "\n".join(metadata) + "\n",
        f"{dist_info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: mlenv-tests\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record_lines = []
    for path, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content.encode()).digest()).rstrip(b"=").decode()
        record_lines.append(f"{path},sha256={digest},{len(content.encode())}")
    record_lines.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record_lines) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, content in files.items():
            # fixed timestamps: the same wheel has the same bytes (and hash) every time
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(info, content)
    return wheel


class _IndexHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache, max-age=0")
        super().end_headers()

    def do_GET(self) -> None:
        root = Path(self.directory)
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        if parts[:1] == ["whl"] and len(parts) >= 2 and (root / f"whl-{parts[1]}").is_dir():
            # a PyTorch-style index: /whl/<build>/<project>/ served from the folder whl-<build>
            root, parts = root / f"whl-{parts[1]}", ["simple", *parts[2:]]
        if parts[:1] == ["simple"]:
            wheels = sorted(root.glob("*.whl"))
            if len(parts) == 1:
                names = sorted({_normalize(w.name.split("-")[0]) for w in wheels})
                body = "".join(f'<a href="{n}/">{n}</a>\n' for n in names)
            else:
                project = _normalize(parts[1])
                links = []
                for wheel in wheels:
                    if _normalize(wheel.name.split("-")[0]) != project:
                        continue
                    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
                    prefix = "" if root == Path(self.directory) else f"{root.name}/"
                    links.append(f'<a href="/files/{html.escape(prefix + wheel.name)}#sha256={digest}">'
                                 f'{html.escape(wheel.name)}</a>')
                if not links:
                    self.send_error(404)
                    return
                body = "\n".join(links)
            payload = f"<!DOCTYPE html><html><body>\n{body}\n</body></html>\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if parts[:1] == ["files"] and len(parts) in (2, 3):
            self.path = "/" + "/".join(parts[1:])
            super().do_GET()
            return
        self.send_error(404)


class LocalIndex:
    """A running index; ``add`` builds a wheel into it."""

    def __init__(self, folder: Path, host: str = "127.0.0.1") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer((host, 0), partial(_IndexHandler, directory=str(folder)))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/simple"

    def add(self, name: str, version: str, *, build: str | None = None, **kwargs) -> Path:
        """A wheel on ``/simple``, or with ``build="cu124"`` on the PyTorch-style ``/whl/cu124``."""
        folder = self.folder / f"whl-{build}" if build else self.folder
        return build_wheel(folder, name, version, **kwargs)

    def build_url(self, build: str) -> str:
        """URL of a PyTorch-style index on this server (``.../whl/cu124``), as a mirror would serve it."""
        return f"http://127.0.0.1:{self.port}/whl/{build}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def index_server(tmp_path):
    """Factory for independent indexes: ``index_server("torch-cu124")``."""
    servers: list[LocalIndex] = []

    def start(name: str = "index") -> LocalIndex:
        server = LocalIndex(tmp_path / f"index-{name}")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# (name, version, requires): the tiny packages most tests lock
TINY_PACKAGES = (("tinydep", "1.0", []), ("tinydep", "1.1", []), ("tinylib", "1.0", ["tinydep>=1.0"]),
                 ("devtool", "0.5", []))


def add_tiny_packages(index: LocalIndex) -> LocalIndex:
    for name, version, requires in TINY_PACKAGES:
        index.add(name, version, requires=requires)
    return index


@pytest.fixture
def local_index(index_server) -> LocalIndex:
    """One index with a few tiny packages most tests need."""
    return add_tiny_packages(index_server("main"))


# What the PyTorch indexes and PyPI publish, in miniature: torch 2.5.1 exists as +cpu and +cu124,
# torch 2.7.0 as +cu128; PyPI's plain torch 2.5.1 is a CUDA 12.4 build (like the real one) and its
# torch 2.9.0 a CUDA 13 build.  Each CUDA build requires its runtime wheels by exact version.
TORCH_RUNTIMES = {"cu124": "12.4.127", "cu128": "12.8.90"}


@pytest.fixture
def torch_index(local_index) -> LocalIndex:
    """``local_index`` plus tiny torch-family wheels: ``/simple`` is PyPI, ``build_url(b)`` the PyTorch
    index of build ``b`` (cpu, cu124, cu128)."""
    index = local_index
    for runtime in TORCH_RUNTIMES.values():
        index.add("nvidia-cuda-runtime-cu12", runtime)
        index.add("nvidia-cublas-cu12", runtime.replace(".127", ".5.8").replace(".90", ".4.1"))
    index.add("nvidia-cuda-runtime", "13.0.96")
    index.add("nvidia-cublas", "13.1.0.3")
    index.add("nvidia-nccl-cu13", "2.27.7")
    linux = "; sys_platform == 'linux'"  # as on the real wheels: no CUDA runtime on macOS
    cu124 = [f"nvidia-cuda-runtime-cu12==12.4.127{linux}", f"nvidia-cublas-cu12==12.4.5.8{linux}"]
    index.add("torch", "2.5.1", requires=cu124)
    index.add("torch", "2.9.0", requires=[f"nvidia-cuda-runtime==13.0.96{linux}", f"nvidia-cublas==13.1.0.3{linux}",
                                          f"nvidia-nccl-cu13==2.27.7{linux}"])
    index.add("torchvision", "0.20.1", requires=["torch==2.5.1"])
    index.add("torch", "2.5.1+cpu", build="cpu")
    index.add("torchvision", "0.20.1+cpu", build="cpu", requires=["torch==2.5.1"])
    index.add("torch", "2.5.1+cu124", build="cu124", requires=cu124)
    index.add("torchvision", "0.20.1+cu124", build="cu124", requires=["torch==2.5.1"])
    index.add("torch", "2.7.0+cu128", build="cu128",
              requires=["nvidia-cuda-runtime-cu12==12.8.90", "nvidia-cublas-cu12==12.8.4.1"])
    return index
