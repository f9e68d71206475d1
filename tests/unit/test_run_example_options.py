"""The main command's options are refused before any setup, in one line naming the option and the fix.

`bash scripts/run_example.sh` sets up a ComfyUI (minutes, the first time) before running its helper; a bad
option used to be noticed only then, or never (`--steps 0` silently ran the default), with argparse's usage
block of the internal helper (which shows --comfyui as required). Here the setup cannot even start (PYTHON
names no interpreter, DEEPGEN_HOME a folder that must stay absent), so a check that came too late fails fast.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path, *args: str):
    env = {**os.environ, "DEEPGEN_HOME": str(tmp_path / "home"), "PYTHON": str(tmp_path / "no-python")}
    for name in ("DEEPGEN_EXAMPLE_STEPS", "DEEPGEN_EXAMPLE_SIZE", "DEEPGEN_EXAMPLE_MODELS"):
        env.pop(name, None)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_example.sh"), "--python", sys.executable, *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert not (tmp_path / "home").exists(), "the setup started before the options were checked"
    return proc


def refused(proc) -> str:
    """The one stderr line of a refused option (exit 2), nothing on stdout, no usage block."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and "usage:" not in proc.stderr, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    return line


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "run_example: --steps is 0: it must be a whole number in 1..1000 (nearest: 1; the authors use 50)."),
    (["--steps", "5000"], "run_example: --steps is 5000: it must be a whole number in 1..1000 (nearest: 1000; "
                          "the authors use 50)."),
    (["--size", "100x100"], "run_example: --size 100x100: width must be a positive multiple of 16, got 100 (output "
                            "sides are multiples of 16 px); the nearest valid size is 96x96."),
    (["--size", "512x500"], "run_example: --size 512x500: height must be a positive multiple of 16, got 500 (output "
                            "sides are multiples of 16 px); the nearest valid size is 512x496."),
    (["--size", "big"], "run_example: --size big: use WIDTH[xHEIGHT] in pixels, e.g. 512 or 768x512"),
])
def test_bad_values_are_refused_with_the_nearest_valid_one(tmp_path, args, message):
    assert refused(run(tmp_path, *args)) == message


def test_the_environment_defaults_are_checked_too(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPGEN_EXAMPLE_STEPS", "0")  # read by the helper as --steps' default
    env_run = subprocess.run(["bash", str(REPO / "scripts" / "run_example.sh"), "--python", sys.executable], cwd=REPO,
                             capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                             env={**os.environ, "DEEPGEN_HOME": str(tmp_path / "home"), "PYTHON": str(tmp_path / "x")})
    assert refused(env_run).startswith("run_example: --steps is 0: ")


def test_a_models_folder_that_does_not_exist_is_said_first(tmp_path):
    """It used to list 14 MISSING files and offer a 14 GB download into the mistyped folder."""
    typo = tmp_path / "modles"
    line = refused(run(tmp_path, "--models", str(typo)))
    assert line == (f"run_example: --models {typo}: folder does not exist. Check the path (the folder that holds "
                    "DeepGen-1.0-diffusers/); for a new folder to download into, add --download.")
    deeper = tmp_path / "nowhere" / "models"
    line = refused(run(tmp_path, "--models", str(deeper), "--download"))
    assert line.startswith(f"run_example: --models {deeper} does not exist, nor does {deeper.parent}: check the path")
    assert not typo.exists() and not deeper.parent.exists()


def test_unknown_options_get_one_line_without_the_helpers_usage(tmp_path):
    assert refused(run(tmp_path, "--stpes", "8")) == ("run_example: unrecognized arguments: --stpes 8 "
                                                      "(every option: bash scripts/run_example.sh --help)")


def test_help_names_the_default_weights_folder_and_every_exit_status():
    out = subprocess.run(["bash", str(REPO / "scripts" / "run_example.sh"), "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120).stdout
    flat = " ".join(out.split())
    assert "~/.cache/comfyui-deepgen/workspace/models/deepgen" in flat.replace("comfyui- deepgen", "comfyui-deepgen")
    for status in ("0 image saved", "2 a bad option", "3 weights missing", "4 --download failed"):
        assert status in flat, status


def test_the_option_check_needs_only_the_standard_library():
    """run_example.sh runs it with the system's python3, before the setup has installed anything."""
    code = ("import runpy, sys; sys.argv = ['scripts/run_example.py', '--check-options', '--steps', '8', '--size', '256']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = {'torch', 'numpy', 'PIL', 'transformers', 'diffusers', 'huggingface_hub'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
