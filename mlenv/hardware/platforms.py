"""The platforms mlenv targets: the names a spec writes, and what each means to Python and uv.

They live with the hardware facts (not in the spec) so that detecting this machine needs nothing
from the spec; the spec validates target platforms against this table.
"""

from __future__ import annotations

# platform name in the spec -> (sys_platform, platform_machine, uv --python-platform)
PLATFORMS: dict[str, tuple[str, str, str]] = {
    "linux/x86_64": ("linux", "x86_64", "x86_64-manylinux_2_28"),
    "linux/aarch64": ("linux", "aarch64", "aarch64-manylinux_2_28"),
    "macos/arm64": ("darwin", "arm64", "aarch64-apple-darwin"),
    "macos/x86_64": ("darwin", "x86_64", "x86_64-apple-darwin"),
    "windows/x86_64": ("win32", "AMD64", "x86_64-pc-windows-msvc"),
}
PLATFORM_ALIASES = {"linux/amd64": "linux/x86_64", "linux/arm64": "linux/aarch64", "darwin/arm64": "macos/arm64"}
