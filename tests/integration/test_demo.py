"""`make demo` runs the two-site story end to end; it must finish and find identical copies."""

from __future__ import annotations

import subprocess

import pytest

from .sites import FORESYNC


@pytest.mark.integration
def test_demo_tells_the_whole_story_and_ends_identical() -> None:
    result = subprocess.run([str(FORESYNC), "demo"], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5."):
        assert step in out, out
    assert "record hit ratio" in out and "worst-case divergence" in out, out
    assert "failback copied" in out and "no full resync" in out, out
    assert "byte-identical" in out, out


@pytest.mark.integration
def test_standalone_demo_still_works() -> None:
    result = subprocess.run([str(FORESYNC), "demo", "--standalone"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "copy and volume file identical: True" in result.stdout
