"""Atomic writes and temp-file cleanup."""

from __future__ import annotations

import os

import torch

from metta.common.fs import atomic_torch_save, atomic_write_text, remove_stale_temp_files, sha256_bytes, sha256_file


def test_atomic_writes_replace_whole_files(tmp_path):
    path = str(tmp_path / "sub" / "a.txt")
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert open(path).read() == "two" and os.listdir(tmp_path / "sub") == ["a.txt"]
    atomic_torch_save({"x": torch.arange(3)}, str(tmp_path / "t.pt"))
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["x"], torch.arange(3))
    assert sha256_file(path) == sha256_bytes(b"two")


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    stale = tmp_path / "model_0001.pt.tmp.999999"
    own = tmp_path / f"model_0002.pt.tmp.{os.getpid()}"
    stale.write_bytes(b"partial")
    own.write_bytes(b"in flight")
    assert remove_stale_temp_files(str(tmp_path), "model_*") == [str(stale)]
    assert own.exists() and not stale.exists()
