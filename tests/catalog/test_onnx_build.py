"""What `lmfoundry catalog build-onnx` refuses before running the builder (the builds
themselves are tested in tests/engines/test_onnx.py and tests/serving/test_onnx_live.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfoundry.catalog.onnx_build import build_onnx, check_build_deps
from lmfoundry.errors import Conflict, InvalidRequest, Unavailable


def test_unknown_precision_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as refused:
        build_onnx(tmp_path, tmp_path / "out", model_id="m", models_dir=tmp_path, precision="q3")
    assert "int4" in refused.value.message


def test_an_existing_output_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(Conflict):
        build_onnx(tmp_path, tmp_path / "out", model_id="m", models_dir=tmp_path)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    try:
        check_build_deps()
    except Unavailable as exc:
        pytest.skip(exc.message)
    (tmp_path / "notes").mkdir()
    with pytest.raises(InvalidRequest) as refused:
        build_onnx(tmp_path / "notes", tmp_path / "out", model_id="m", models_dir=tmp_path)
    assert "config.json" in refused.value.message
    assert not (tmp_path / "out").exists()
