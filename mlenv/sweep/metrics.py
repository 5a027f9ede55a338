"""Metrics a notebook reports to `mlenv sweep`, and reading them back from executed notebooks.

``record`` runs inside the kernel, where nothing but mlenv and the standard library may exist, so it
depends on nothing else: it emits one display_data output with its own MIME type.  The output lands
in the executed notebook like any other, so it survives papermill, Dask workers and S3 unchanged;
the sweep reads it back with ``extract_metrics``.  scrapbook's ``glue`` values are read the same way.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

METRIC_MIME = "application/vnd.mlenv.metric+json"
SCRAPBOOK_MIME_PREFIX = "application/scrapbook.scrap."

# Values recorded in this process, for callers that use ``record`` outside a kernel (scripts, tests).
recorded: dict[str, Any] = {}


def _plain(value: Any) -> Any:
    """A JSON-safe copy of ``value``: numbers, strings, booleans, None, and lists/dicts of those."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN/inf; None keeps the row and shows the metric as missing.
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy / torch scalars, without importing either
    if callable(item):
        try:
            return _plain(item())
        except (TypeError, ValueError):
            pass
    if isinstance(value, (list, tuple)):
        return [_plain(element) for element in value]
    if isinstance(value, dict):
        return {str(key): _plain(element) for key, element in value.items()}
    raise TypeError(f"mlenv.record: {type(value).__name__} is not a number, string, boolean or list of those")


def record(name: str, value: Any) -> None:
    """Record a metric of this run, e.g. ``mlenv.record("accuracy", 0.93)``.

    In a kernel it emits a display_data output the sweep reads back; elsewhere it only remembers it.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("mlenv.record: the metric name must be a non-empty string")
    plain = _plain(value)
    recorded[name] = plain
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "display_pub", None) is None:
        return
    from IPython.display import display  # present whenever a shell is

    display(
        {METRIC_MIME: {"name": name, "value": plain}, "text/plain": f"{name} = {plain!r}"},
        raw=True,
        metadata={METRIC_MIME: {"mlenv": 1}},
    )


def extract_metrics(nb: Any) -> dict[str, Any]:
    """Metrics recorded in an executed notebook (a NotebookNode or plain dict); the last value wins."""
    metrics: dict[str, Any] = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) or []:
            if output.get("output_type") not in ("display_data", "execute_result", "update_display_data"):
                continue
            data = output.get("data") or {}
            if METRIC_MIME in data:
                payload = data[METRIC_MIME]
                if isinstance(payload, str):
                    payload = json.loads(payload)
                if isinstance(payload, dict) and isinstance(payload.get("name"), str):
                    metrics[payload["name"]] = payload.get("value")
                continue
            for mime, payload in data.items():
                if mime.startswith(SCRAPBOOK_MIME_PREFIX):
                    scrap = _scrapbook_value(payload)
                    if scrap is not None:
                        metrics[scrap[0]] = scrap[1]
    return metrics


def _scrapbook_value(payload: Any) -> tuple[str, Any] | None:
    # scrapbook 0.5 glues {"name": ..., "data": ..., "encoder": "json"|"text"|...}; only plain values
    # (json / text encoders) are metrics, pandas and display scraps are not.
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return None
    data = payload.get("data")
    if payload.get("encoder") == "text" and isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            pass
    if isinstance(data, (bool, int, float, str)) or data is None:
        return payload["name"], data
    if isinstance(data, list):
        return payload["name"], data
    return None
