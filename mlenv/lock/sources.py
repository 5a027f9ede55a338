"""Sources that move on: the requirements files `mlenv init` imported, compared with what it saw.

After `init`, mlenv.toml is the spec; the imported files often stay in the repository and keep being
edited by habit.  `init` records their digests in ``[imported] files``; `lock` and `lock --check`
name each one that changed or disappeared since, so an edit there is not silently ignored.
"""

from __future__ import annotations

import hashlib

from mlenv.spec import Spec


def moved_sources(spec: Spec) -> list[str]:
    messages = []
    for relative, digest in sorted(spec.imported.items()):
        path = spec.root / relative
        try:
            current = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            messages.append(f"{relative}, imported by `mlenv init`, is gone; mlenv.toml is the spec now "
                            "(remove it from [imported] files)")
            continue
        if current != digest:
            messages.append(f"{relative} changed since `mlenv init` imported it, and mlenv.toml does not follow it: "
                            "review the change and edit mlenv.toml, or run `mlenv init --refresh` to re-import")
    return messages
