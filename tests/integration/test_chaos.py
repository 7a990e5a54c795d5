"""A short real-process chaos run (issue 5): `make chaos CYCLES=50` runs the long one."""

from __future__ import annotations

import pytest

from foresync.testing import chaos


@pytest.mark.integration
@pytest.mark.parametrize(("mode", "seed"), [("lookahead", 11), ("sync", 12)])
def test_chaos_cycles_end_identical_and_keep_promises(mode: str, seed: int,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert chaos.run(cycles=3, seed=seed, mode=mode) == 0, capsys.readouterr().out
    assert "3 passed, 0 failed" in capsys.readouterr().out


def test_block_versions_are_recognised_and_garbage_is_not() -> None:
    block = 7
    assert chaos._version_of(chaos._content(block, 42), block) == 42
    assert chaos._version_of(bytes(chaos.BLOCK), block) == 0
    assert chaos._version_of(chaos._content(block + 1, 42), block) is None
    torn = chaos._content(block, 42)[:100] + chaos._content(block, 43)[100:]
    assert chaos._version_of(torn, block) is None
