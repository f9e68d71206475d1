"""The edit templates' sample pictures reach ComfyUI's input folder when the pack loads, and a user's file
of the same name is never replaced (nodes/sample_inputs.py)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "example_workflows" / "input"
NAMES = sorted(p.name for p in SAMPLES.glob("*.png"))


@pytest.fixture
def install(comfy_inprocess):
    return sys.modules[f"{comfy_inprocess.pack.__name__}.nodes.sample_inputs"].install_sample_inputs


def test_the_server_starts_with_the_samples_in_its_input_folder(comfy_server):
    """A fresh ComfyUI (empty input folder) gets every sample, byte for byte, and the API can serve them."""
    assert NAMES, "example_workflows/input/ holds the edit templates' pictures"
    for name in NAMES:
        assert (comfy_server.base / "input" / name).read_bytes() == (SAMPLES / name).read_bytes(), name
        status, content_type, body = comfy_server.request("GET", f"/view?type=input&filename={name}")
        assert status == 200 and body == (SAMPLES / name).read_bytes(), name
    assert "copied the edit templates' sample pictures" in comfy_server.log_text()


def test_a_users_file_of_the_same_name_is_kept(install, tmp_path, caplog):
    mine = b"my own picture, not the sample"
    (tmp_path / NAMES[0]).write_bytes(mine)
    (tmp_path / NAMES[1]).mkdir()  # even a folder of that name stays as it is
    with caplog.at_level(logging.INFO):
        written = install(str(tmp_path))
    assert written == NAMES[2:]
    assert (tmp_path / NAMES[0]).read_bytes() == mine and (tmp_path / NAMES[1]).is_dir()
    assert f"input/{NAMES[0]} is not the pack's sample picture; it is kept" in caplog.text
    assert install(str(tmp_path)) == []  # the next start copies nothing: every name is taken
    assert (tmp_path / NAMES[0]).read_bytes() == mine


def test_a_missing_input_folder_is_reported_not_fatal(install, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert install(str(tmp_path / "nowhere")) == []
    assert caplog.text.count("could not copy the sample picture") == len(NAMES)
    assert not (tmp_path / "nowhere").exists()  # never creates a folder the user did not make
