"""Noise and the Euler/CFG sampling loop (docs/inference.md#scheduler, #sampling)."""
import pytest
import torch

from deepgen_model import tiny as deepgen_tiny
from deepgen_model.errors import DeepGenInputError
from deepgen_model.sampling import make_noise, sample
from deepgen_model.scheduler import official_sigmas
from deepgen_model.transformer import DeepGenTransformer

D, DP = deepgen_tiny.TINY_DIT["joint_attention_dim"], deepgen_tiny.TINY_DIT["pooled_projection_dim"]


def ctx(b, value, length=3):
    return torch.full((b, length, D), float(value)), torch.full((b, DP), float(value))


class FakeModel:
    """v = 0.5 * x + pooled[:, 0]: cond (pooled 2) and uncond (pooled -1) give distinct velocities."""

    def __init__(self, dtype=torch.float32):
        self.calls, self.dtype, self.device = [], dtype, torch.device("cpu")

    def __call__(self, x, t, seq, pooled, references=None):
        self.calls.append(dict(x=x.clone(), t=t.clone(), pooled=pooled[:, 0].clone(), refs=references))
        return (0.5 * x.float() + pooled[:, :1, None, None].float()).to(x.dtype)


def euler_reference(noise, sigmas, velocity):
    x = noise.clone()
    for i in range(len(sigmas) - 1):
        x = x + (sigmas[i + 1] - sigmas[i]) * velocity(x)
    return x


def test_make_noise_is_a_cpu_generator_randn():
    n = make_noise(42, 2, 64, 48)
    assert n.shape == (2, 16, 8, 6) and n.dtype == torch.float32 and n.device.type == "cpu"
    expected = torch.randn((2, 16, 8, 6), generator=torch.Generator("cpu").manual_seed(42))
    assert torch.equal(n, expected)
    assert torch.equal(make_noise(42, 2, 64, 48), n)
    assert not torch.equal(make_noise(43, 2, 64, 48), n)


@pytest.mark.parametrize("seed", [0, 2**32, 2**63 - 1, 2**64 - 1])
def test_make_noise_accepts_full_64bit_seeds(seed):
    n = make_noise(seed, 1, 16, 16)
    assert torch.equal(n, torch.randn((1, 16, 2, 2), generator=torch.Generator("cpu").manual_seed(seed)))


@pytest.mark.parametrize("args", [(-1, 1, 16, 16), (2**64, 1, 16, 16), (1.5, 1, 16, 16), (0, 0, 16, 16),
                                  (0, 1, 24, 16), (0, 1, 16, 0)])
def test_make_noise_validates(args):
    with pytest.raises(DeepGenInputError):
        make_noise(*args)


def test_cfg_formula_batched_single_call_uncond_first():
    noise, sigmas, s = torch.randn(2, 16, 4, 4), official_sigmas(3), 4.0
    model = FakeModel()
    out = sample(model, noise, sigmas, cond=ctx(2, 2.0), uncond=ctx(2, -1.0), cfg_scale=s)
    # v_u = 0.5x - 1, v_c = 0.5x + 2 -> v = v_u + s (v_c - v_u) = 0.5x - 1 + 3s
    torch.testing.assert_close(out, euler_reference(noise, sigmas, lambda x: 0.5 * x - 1 + 3 * s), atol=1e-6, rtol=0)
    assert len(model.calls) == 3
    for i, call in enumerate(model.calls):
        assert call["x"].shape[0] == 4
        assert call["pooled"].tolist() == [-1.0, -1.0, 2.0, 2.0]  # [uncond, cond], as official
        assert torch.equal(call["t"], (sigmas[i] * 1000).expand(4)) and call["t"].dtype == torch.float32


def test_unequal_context_lengths_take_two_calls():
    noise, sigmas = torch.randn(1, 16, 4, 4), official_sigmas(2)
    batched = sample(FakeModel(), noise, sigmas, cond=ctx(1, 2.0), uncond=ctx(1, -1.0), cfg_scale=3.0)
    model = FakeModel()  # different context lengths are never padded: two calls, uncond first
    split = sample(model, noise, sigmas, cond=ctx(1, 2.0, length=5), uncond=ctx(1, -1.0, length=3), cfg_scale=3.0)
    assert len(model.calls) == 4 and all(c["x"].shape[0] == 1 for c in model.calls)
    assert [c["pooled"].item() for c in model.calls] == [-1.0, 2.0, -1.0, 2.0]
    torch.testing.assert_close(split, batched, atol=1e-6, rtol=0)  # FakeModel ignores the context length


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.0])
def test_scale_at_most_one_runs_only_the_conditional_pass(scale):
    noise, sigmas = torch.randn(2, 16, 4, 4), official_sigmas(4)
    model = FakeModel()
    out = sample(model, noise, sigmas, cond=ctx(2, 2.0), uncond=ctx(2, -1.0), cfg_scale=scale)
    assert len(model.calls) == 4
    assert all(c["x"].shape[0] == 2 and c["pooled"].tolist() == [2.0, 2.0] for c in model.calls)
    torch.testing.assert_close(out, euler_reference(noise, sigmas, lambda x: 0.5 * x + 2), atol=1e-6, rtol=0)
    sample(FakeModel(), noise, sigmas, cond=ctx(2, 2.0), uncond=None, cfg_scale=scale)  # uncond not needed


def test_cfg_above_one_needs_uncond():
    with pytest.raises(DeepGenInputError, match="uncond"):
        sample(FakeModel(), torch.zeros(1, 16, 2, 2), official_sigmas(2), cond=ctx(1, 1.0), cfg_scale=4.0)


def test_latents_stay_fp32_while_model_inputs_use_compute_dtype():
    model = FakeModel(dtype=torch.bfloat16)
    noise = torch.randn(1, 16, 4, 4)
    out = sample(model, noise, official_sigmas(3), cond=ctx(1, 0.25), uncond=ctx(1, 0.0), cfg_scale=2.0)
    assert out.dtype == torch.float32
    assert all(c["x"].dtype == torch.bfloat16 and c["t"].dtype == torch.float32 for c in model.calls)
    # the fp32 carry differs from a loop that re-rounds latents to bf16 every step
    assert not torch.equal(out, out.bfloat16().float())


def test_references_reach_both_cfg_halves():
    model, refs = FakeModel(), [[torch.zeros(16, 4, 4)], [torch.ones(16, 2, 2)]]
    sample(model, torch.zeros(2, 16, 4, 4), official_sigmas(1), cond=ctx(2, 1.0), uncond=ctx(2, 0.0),
           cfg_scale=2.0, references=refs)
    assert model.calls[0]["refs"] == refs + refs
    shared = [torch.zeros(16, 4, 4)]
    model = FakeModel()
    sample(model, torch.zeros(2, 16, 4, 4), official_sigmas(1), cond=ctx(2, 1.0), uncond=ctx(2, 0.0),
           cfg_scale=2.0, references=shared)
    assert model.calls[0]["refs"] is shared


def test_callback_once_per_step_with_previews():
    noise, sigmas = torch.randn(1, 16, 4, 4), official_sigmas(5)
    seen = []
    out = sample(FakeModel(), noise, sigmas, cond=ctx(1, 2.0),
                 callback=lambda step, total, x, x0: seen.append((step, total, x.clone(), x0.clone())))
    assert [(s, t) for s, t, _, _ in seen] == [(i, 5) for i in range(5)]
    assert torch.equal(seen[-1][2], out)
    v0 = 0.5 * noise + 2  # x0_pred of step 0 = x - sigma_0 * v
    torch.testing.assert_close(seen[0][3], noise - sigmas[0] * v0, atol=1e-6, rtol=0)


def test_callback_exception_propagates_and_stops_sampling():
    class Cancel(Exception):
        pass

    model = FakeModel()

    def cancel(step, total, x, x0):
        if step == 1:
            raise Cancel("user interrupt")

    with pytest.raises(Cancel, match="user interrupt"):
        sample(model, torch.zeros(1, 16, 2, 2), official_sigmas(10), cond=ctx(1, 1.0), callback=cancel)
    assert len(model.calls) == 2


class OneBranchPerCall:
    """Runs a [uncond, cond] batch of one sample as two DiT calls (sample's path for unequal contexts)."""

    def __init__(self, model):
        self.model, self.dtype, self.device = model, model.dtype, model.device

    def __call__(self, x, t, seq, pooled, references=None):
        return torch.cat([self.model(x[i:i + 1], t[i:i + 1], seq[i:i + 1], pooled[i:i + 1], references)
                          for i in range(x.shape[0])])


@torch.no_grad()
def test_tiny_dit_with_reference_batched_and_split_cfg_agree():
    model = DeepGenTransformer(deepgen_tiny.build_dit(0))
    g = torch.Generator().manual_seed(1)
    cond = (torch.randn(1, 4, D, generator=g), torch.randn(1, DP, generator=g))
    uncond = (torch.randn(1, 4, D, generator=g), torch.randn(1, DP, generator=g))
    refs = [torch.randn(16, 6, 6, generator=g)]
    noise, sigmas = make_noise(7, 1, 64, 64), official_sigmas(3)
    a = sample(model, noise, sigmas, cond, uncond, cfg_scale=4.0, references=refs)
    b = sample(OneBranchPerCall(model), noise, sigmas, cond, uncond, cfg_scale=4.0, references=refs)
    assert a.shape == noise.shape and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    c = sample(model, noise, sigmas, cond, uncond, cfg_scale=4.0)
    assert (a - c).abs().max() > 1e-3  # the reference steers the result
