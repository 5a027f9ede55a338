"""mlenv: one spec, one lock, and every place ML code runs built from it and proven by it."""

__version__ = "0.1.0"


def record(name: str, value) -> None:
    """Record a metric from inside a notebook run by `mlenv sweep` (a no-op display outside one)."""
    from mlenv.sweep.metrics import record as _record

    _record(name, value)
