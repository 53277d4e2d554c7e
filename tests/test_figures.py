"""The README's reliability figures are not stale (tests/figures.py, `make figures`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import figures
import pytest

pytestmark = pytest.mark.unit


def _stored() -> dict:
    return json.loads(figures.STORED.read_text())


def test_readme_block_is_what_the_stored_figures_render_to():
    block = figures.readme_block(figures.README.read_text())
    assert block is not None, "README.md lost its reliability figures block"
    assert block == figures.render(_stored()["figures"]), (
        "README.md's reliability figures differ from tests/figures.json: run `make figures`"
    )


def test_figures_were_measured_over_the_cases_the_suite_has_now():
    stored, now = set(_stored()["cases"]), set(figures.collected_cases())
    added, gone = sorted(now - stored), sorted(stored - now)
    assert not added and not gone, (
        "the figures are stale: run `make figures`\n"
        f"cases added since: {added[:20]}\ncases gone since: {gone[:20]}"
    )


def test_stored_figures_are_a_full_runs():
    stored = _stored()["figures"]
    assert figures.complete(stored) == []
    assert all(
        all(cases.values())
        for group in ("hostile", figures.ROWS)
        for cases in stored[group].values()
    ), "a case stored as not contained"


def test_sources_are_the_modules_that_record_figures():
    tests = Path(figures.__file__).parent
    recording = {
        p.name
        for p in tests.glob("test_*.py")
        if re.search(r"record_figure\(|mark\.figure\(", p.read_text())
    }
    assert recording == set(figures.SOURCES), recording ^ set(figures.SOURCES)


def test_the_script_refuses_a_partial_measurement(tmp_path, capsys):
    partial = tmp_path / "measured.json"
    partial.write_text(json.dumps({"hostile": {"rlimit": {"a": True}}}))
    before = figures.README.read_text()
    assert figures.main([str(partial)]) == 1
    assert "not a full run's" in capsys.readouterr().err
    assert figures.README.read_text() == before
