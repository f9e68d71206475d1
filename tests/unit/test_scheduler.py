"""The official sigma list (docs/inference.md#scheduler, #pitfall-13) and scheduler-config handling."""
import ast
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from deepgen_model.errors import DeepGenInputError
from deepgen_model.pipeline import DeepGenPipeline
from deepgen_model.scheduler import (dynamic_shift_mu, dynamic_sigmas, latent_seq_len, official_sigmas,
                                     scheduler_shift, sigmas_from_config)


def test_four_steps_match_the_spec_numbers():
    s = official_sigmas(4)
    assert s.dtype == torch.float32 and s.shape == (5,)
    torch.testing.assert_close(s, torch.tensor([1.0, 0.857692, 0.602151, 0.008929, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(s[:-1] * 1000, torch.tensor([1000.0, 857.692, 602.151, 8.929]), atol=1e-3, rtol=0)


def test_fifty_steps_double_shifted_endpoints():
    s = official_sigmas(50)
    assert s.shape == (51,) and s[0] == 1.0 and s[-1] == 0.0
    assert s[1].item() == pytest.approx(0.99312, abs=1e-5)
    assert s[-2].item() == pytest.approx(0.0089286, abs=1e-7)  # single shift would end at 0.0029940
    assert torch.all(s[1:] < s[:-1])


@pytest.mark.parametrize("steps", [1, 2, 4, 20, 28, 50, 100])
def test_bit_identical_to_diffusers_set_timesteps(steps):
    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sch.set_timesteps(steps)
    assert torch.equal(official_sigmas(steps), sch.sigmas)
    assert torch.equal(official_sigmas(steps)[:-1] * 1000, sch.timesteps)


def test_other_shift_matches_diffusers():
    sch = FlowMatchEulerDiscreteScheduler(shift=1.5)
    sch.set_timesteps(10)
    assert torch.equal(official_sigmas(10, shift=1.5), sch.sigmas)
    assert not torch.equal(official_sigmas(10, shift=1.5), official_sigmas(10))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_steps_validated(bad):
    with pytest.raises(DeepGenInputError, match="steps"):
        official_sigmas(bad)


def test_scheduler_shift_reads_config():
    assert scheduler_shift({"shift": 3.0, "use_dynamic_shifting": False}) == 3.0
    assert scheduler_shift({"shift": 2.5}) == 2.5
    assert scheduler_shift({}) == 3.0  # native .pt fallback
    with pytest.raises(DeepGenInputError, match="use_dynamic_shifting"):
        scheduler_shift({"shift": 3.0, "use_dynamic_shifting": True})
    with pytest.raises(DeepGenInputError, match="use_karras_sigmas"):
        scheduler_shift({"shift": 3.0, "use_karras_sigmas": True})


def test_sigmas_from_config_static_and_fallback():
    assert torch.equal(sigmas_from_config(None, 4), official_sigmas(4))
    assert torch.equal(sigmas_from_config({"shift": 2.0, "num_train_timesteps": 1000}, 6), official_sigmas(6, 2.0))


def test_dynamic_shifting_uses_target_seq_len_mu_like_diffusers():
    cfg = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
           "base_image_seq_len": 256, "max_image_seq_len": 4096}
    mu = dynamic_shift_mu(cfg, 32 * 32)  # 512x512 image -> 64x64 latent -> 1024 tokens
    assert mu == pytest.approx(0.5 + 0.65 * (1024 - 256) / (4096 - 256))
    assert dynamic_shift_mu({}, 4096) == pytest.approx(1.16)  # official pipeline default max_shift
    sch = FlowMatchEulerDiscreteScheduler(**cfg)
    sch.set_timesteps(8, mu=mu)
    got = sigmas_from_config(cfg, 8, image_seq_len=1024)
    assert torch.equal(got, sch.sigmas)
    assert got[1].item() != pytest.approx(official_sigmas(8, math.exp(mu))[1].item(), abs=1e-6)  # shifted once only
    with pytest.raises(DeepGenInputError, match="image_seq_len"):
        sigmas_from_config(cfg, 8)
    lin = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="linear")
    lin.set_timesteps(5, mu=1.3)
    assert torch.equal(dynamic_sigmas(5, 1.3, time_shift_type="linear"), lin.sigmas)


def test_the_pipeline_shifts_by_the_target_latent_tokens():
    """A 64x48 px image is a 8x6 latent, 4x3 DiT tokens (as diffusers' SD3 pipeline counts them)."""
    assert latent_seq_len(6, 8) == 12 and latent_seq_len(64, 64) == 1024
    cfg = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 1,
           "max_image_seq_len": 64}
    sch = FlowMatchEulerDiscreteScheduler(**cfg)
    sch.set_timesteps(6, mu=dynamic_shift_mu(cfg, (48 // 8 // 2) * (64 // 8 // 2)))
    assert torch.equal(DeepGenPipeline.sigmas(SimpleNamespace(scheduler_config=cfg), 6, width=64, height=48), sch.sigmas)


@pytest.mark.parametrize("cfg, seq_len, fragment", [
    ({"base_image_seq_len": 256, "max_image_seq_len": 257}, 147456, r"gives mu = 9\.715e\+04"),  # exp overflows
    ({"base_shift": -10.0, "max_shift": 10.0}, 147456, "makes no valid schedule"),
    ({"time_shift_type": "linear", "base_shift": -1.0, "max_shift": -1.0}, 1024, "linear time shift"),
    ({"base_image_seq_len": 1024, "max_image_seq_len": 1024}, 1024, "base_image_seq_len = max_image_seq_len = 1024"),
])
def test_dynamic_shift_that_makes_no_schedule_is_named(cfg, seq_len, fragment):
    """Issue 20: dynamic-shift fields that pass one by one but give no schedule for this size were an
    OverflowError, a ZeroDivisionError or NaN sigmas (then blamed on fp16 weights)."""
    with pytest.raises(DeepGenInputError, match=fragment):
        sigmas_from_config({"use_dynamic_shifting": True, **cfg}, 8, image_seq_len=seq_len)


SCHEDULE_FIELDS = {"shift", "multiplier", "num_train_timesteps"}  # ComfyUI's names and diffusers' for the same two numbers
# tiny.py imports nothing of the engine by design (test_fixtures.py)
LITERAL_ALLOWED = {"deepgen_model/tiny.py"}


def _schedule_literals(path: Path):
    """(line, field) of every `field: <number>` / `field=<number>` setting a schedule field to a bare number."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        pairs = zip(node.keys, node.values) if isinstance(node, ast.Dict) else (
            [(ast.Constant(node.arg), node.value)] if isinstance(node, ast.keyword) else [])
        for key, value in pairs:
            if isinstance(key, ast.Constant) and key.value in SCHEDULE_FIELDS and isinstance(value, ast.Constant) \
                    and isinstance(value.value, (int, float)):
                yield value.lineno, key.value


def test_the_schedule_defaults_are_written_once():
    """The fallback shift and the timestep multiplier come from deepgen_model/constants.py wherever the pack sets
    them (a second literal copy would drift from it unseen)."""
    repo = Path(__file__).resolve().parents[2]
    found = [f"{path.relative_to(repo)}:{line} {field}" for folder in ("deepgen_model", "nodes")
             for path in sorted((repo / folder).glob("*.py")) if str(path.relative_to(repo)) not in LITERAL_ALLOWED
             for line, field in _schedule_literals(path)]
    assert not found, f"use DEFAULT_SHIFT / NUM_TRAIN_TIMESTEPS from deepgen_model/constants.py: {found}"
    assert sigmas_from_config(None, 4).tolist() == official_sigmas(4, 3.0, 1000).tolist()
