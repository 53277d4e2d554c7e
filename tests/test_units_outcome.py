"""Sizes, durations, reasons and exit codes."""

from __future__ import annotations

import signal

import pytest

from agent_supervise.errors import BadInput
from agent_supervise.outcome import Outcome, Reason, exit_code_for
from agent_supervise.units import format_duration, format_size, parse_duration, parse_size

MiB = 1 << 20


pytestmark = pytest.mark.unit  # fakes only: `make unit`


@pytest.mark.parametrize(
    "text, value",
    [
        ("50M", 50 * MiB),
        ("1.5G", 3 << 29),
        ("512MiB", 512 * MiB),
        ("52428800", 52428800),
        ("4K", 4096),
        ("2T", 2 << 40),
        ("100B", 100),
        ("64m", 64 * MiB),
        (1024, 1024),
    ],
)
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "text, hint",
    [
        ("50 MB", "try 50M"),
        ("50MB", "try 50M"),
        ("-5M", "try 50M"),
        ("0", "above zero"),
        ("abc", "try 50M"),
        ("", "try 50M"),
        (str(10**30), "too large"),
        ("0.5", "whole number"),
        ("1.5kb", "try 1.5K"),
    ],
)
def test_bad_sizes_name_the_value_and_show_an_example(text, hint):
    with pytest.raises(BadInput) as info:
        parse_size(text, what="--memory")
    assert hint in str(info.value) and "--memory" in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("100ms", 0.1),
        ("2s", 2.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("5", 5.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("2min", 120.0),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2 parsecs", "s", "-1s", "10x", "1h30", "0"])
def test_bad_durations(text):
    with pytest.raises(BadInput, match="try 100ms, 2s, 10m or 1h|above zero"):
        parse_duration(text, what="--grace")


def test_zero_duration_where_allowed():
    assert parse_duration("0", allow_zero=True) == 0


def test_formatting():
    assert format_size(50 * MiB) == "50.0 MiB" and format_size(512) == "512 B"
    assert format_size(None) == "-"
    assert format_duration(0.25) == "250ms" and format_duration(90) == "1m30s"


@pytest.mark.parametrize(
    "reason, status, signum, code",
    [
        (Reason.OK, 0, None, 0),
        (Reason.FAILED, 3, None, 3),
        (Reason.OOM_KILLED, None, 9, 137),
        (Reason.MEMORY_EXCEEDED, None, 15, 137),
        (Reason.TIMEOUT, None, 15, 124),
        (Reason.NOT_FOUND, None, None, 127),
        (Reason.NOT_EXECUTABLE, None, None, 126),
        (Reason.SIGNALED, None, signal.SIGSEGV, 139),
        (Reason.INTERRUPTED, None, 2, 130),
        (Reason.INTERRUPTED, None, 15, 143),
        (Reason.SETUP_FAILED, None, None, 125),
    ],
)
def test_exit_codes(reason, status, signum, code):
    assert exit_code_for(reason, status, signum) == code


def test_message_and_json():
    out = Outcome(
        Reason.MEMORY_EXCEEDED,
        137,
        ("python3", "hog.py"),
        "cgroup1",
        50 * MiB,
        peak_bytes=50 * MiB,
        duration_s=0.12345,
        pid=7,
        signal=9,
    )
    assert out.message() == (
        "'python3 hog.py' killed: memory limit 50.0 MiB exceeded (peak 50.0 MiB, backend cgroup1)"
    )
    data = out.to_json()
    assert {
        k: data[k]
        for k in (
            "reason",
            "exit_code",
            "peak_bytes",
            "limit_bytes",
            "backend",
            "duration_s",
            "pid",
            "cmd",
            "signal",
        )
    } == {
        "reason": "memory_exceeded",
        "exit_code": 137,
        "peak_bytes": 50 * MiB,
        "limit_bytes": 50 * MiB,
        "backend": "cgroup1",
        "duration_s": 0.123,
        "pid": 7,
        "cmd": ["python3", "hog.py"],
        "signal": "SIGKILL",
    }


def test_failure_message_shows_the_memory_note_with_the_cage_facts():
    out = Outcome(
        Reason.FAILED,
        1,
        ("tail", "/dev/zero"),
        "rlimit-data",
        50 * MiB,
        status=1,
        peak_bytes=45 * MiB,
        peak_source="sampled",
        detail="probably out of memory: peak 45.0 MiB of its 50.0 MiB cap",
    )
    text = out.message()
    assert "(peak 45.0 MiB sampled, backend rlimit-data); probably out of memory" in text
    out.detail = ""
    assert out.message() == "'tail /dev/zero' exited with status 1"
