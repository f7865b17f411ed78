"""runner.files: a file is whole or absent, never half-written; what was there stays on failure."""

from __future__ import annotations

import pytest

from runner.files import atomic_write_json, atomic_write_text, atomic_write_with, sha256_file


def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path):
    # setup
    target = atomic_write_text(tmp_path / "table.md", "old")

    def half(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half of the new")
        raise OSError("disk full")

    # execute
    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(target, half)
    # assert
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_json_is_written_without_nan_and_hashes_are_of_the_bytes(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.5, float("inf")]})
    assert path.read_text().replace(" ", "").replace("\n", "") == '{"a":null,"b":[1.5,null]}'
    import hashlib

    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
