"""Dev boxes: the provider-independent model, and the docker provider end to end on the real engine."""

from __future__ import annotations

import pytest

from mlenv.boxes import Box, UpRequest, format_duration, parse_duration, provider, validate_box_name
from mlenv.errors import UsageError


@pytest.mark.parametrize("name", ["a", "gpu1", "my-box-2", "a" * 31])
def test_valid_box_names(name):
    assert validate_box_name(name) == name


@pytest.mark.parametrize("name", ["", "1box", "Box", "a_b", "a.b", "a b", "a" * 32, "a\n", "-a", "a;rm", "ä"])
def test_invalid_box_names_are_usage_errors(name):
    with pytest.raises(UsageError):
        validate_box_name(name)
    with pytest.raises(UsageError):
        UpRequest(name)


def test_durations():
    assert [parse_duration(t) for t in ("45s", "30m", "2h", "1d", 20)] == [45, 1800, 7200, 86400, 20]
    for bad in ("", "30", "1h30m", "-5m", "0s", "2 h"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    assert [format_duration(s) for s in (None, 5, 65, 3725, 90000)] == ["-", "5s", "1m05s", "1h02m", "1d01h"]


def test_cost_so_far_counts_running_time_only():
    box = Box("b", "aws", "running", price_per_hour=0.5, started=1000.0)
    assert box.cost_so_far(now=1000.0 + 7200) == 1.0
    assert box.to_json(now=1000.0 + 3600)["uptime_s"] == 3600
    stopped = Box("b", "aws", "stopped", price_per_hour=0.5, started=1000.0)
    assert stopped.uptime_s(now=5000.0) is None and stopped.cost_so_far(now=5000.0) == 0.0


def test_unknown_provider_is_a_usage_error_with_a_suggestion():
    with pytest.raises(UsageError, match="unknown box provider") as info:
        provider("dokcer")
    assert "docker" in (info.value.hint or "")
