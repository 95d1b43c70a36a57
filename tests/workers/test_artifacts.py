"""Which artifacts would run code when loaded: read from their bytes, never loaded."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from workers.artifacts import declared, serialised_code


class _System:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("echo pwned",)


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_calling_anything_is_named_at_every_protocol(tmp_path: Path, protocol: int):
    path = _file(tmp_path, "m.bin", pickle.dumps(_System(), protocol=protocol))
    assert serialised_code(path) == "a pickle that calls posix.system when loaded"


def test_a_second_pickle_behind_a_harmless_one_is_read_too(tmp_path: Path) -> None:
    path = _file(tmp_path, "m.bin", pickle.dumps([1.0]) + pickle.dumps(_System()))
    assert "posix.system" in serialised_code(path)


def test_numpy_object_arrays_are_code_and_plain_arrays_are_data(tmp_path: Path) -> None:
    np.save(tmp_path / "plain.npy", np.zeros(3))
    np.save(tmp_path / "objects.npy", np.array([{}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "both.npz", a=np.zeros(2), o=np.array([{}], dtype=object))
    assert serialised_code(tmp_path / "plain.npy") == ""
    assert "numpy array of Python objects" in serialised_code(tmp_path / "objects.npy")
    assert serialised_code(tmp_path / "both.npz").startswith("o.npy: a numpy array")


@pytest.mark.parametrize(
    "text", [b"2.25", b"class,prob\n0,0.1\n", b"checkpoint at step 5\nloss 0.3\n", b""]
)
def test_text_and_empty_files_are_data(tmp_path: Path, text: bytes) -> None:
    assert serialised_code(_file(tmp_path, "out.txt", text)) == ""


def test_code_suffixes_are_code_but_a_pth_checkpoint_is_judged_by_its_bytes(tmp_path: Path):
    assert serialised_code(_file(tmp_path, "json.py", b"x = 1\n")) == "it is code (by its suffix)"
    assert serialised_code(_file(tmp_path, "model.pth", pickle.dumps({"w": [1.0]}))) == ""


def test_artifact_patterns_match_paths_and_the_directories_they_are_in() -> None:
    assert declared("model.safetensors", ["*.safetensors"])
    assert declared("ckpt/step-3/w.bin", ["ckpt"])
    assert declared("ckpt/step-3/w.bin", ["ckpt/"])
    assert not declared("ckpt2/w.bin", ["ckpt"])
    assert not declared("notes.txt", ["model.*"])
