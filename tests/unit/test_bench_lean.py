"""The engine's lean options (deepgen_model/pipeline.py, precision.py) on the tiny release: offloading,
the cached reference latents and fp8 DiT weights keep the outputs the benchmarks measure."""
import pytest
import torch

from deepgen_model import DeepGenInputError, DeepGenPipeline


@pytest.fixture(scope="module")
def release(tiny_layouts):
    return tiny_layouts["diffusers"]


@pytest.fixture(scope="module")
def plain(release):
    return DeepGenPipeline.from_pretrained(release, dtype="fp32", device="cpu")


def _ref_image():
    return torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("offload", ["encoder", "all"])
def test_offload_modes_move_modules_and_keep_outputs(release, plain, offload, monkeypatch):
    pipe = DeepGenPipeline.from_pretrained(release, dtype="fp32", device="cpu", offload=offload)
    moves = []
    for name in ("vlm", "scb", "transformer", "vae"):
        module = getattr(pipe, name)
        original = module.to
        monkeypatch.setattr(module, "to", lambda *a, _n=name, _o=original, **k: (moves.append(_n), _o(*a, **k))[1])
    out = pipe("a red cat", "", images=[_ref_image()], steps=2, seed=3, max_side=64)
    want = plain("a red cat", "", images=[_ref_image()], steps=2, seed=3, max_side=64)
    torch.testing.assert_close(out.latents, want.latents, atol=0, rtol=0)
    assert moves.count("vlm") == 2 and moves.count("scb") == 2  # in for encoding, out after
    assert ("transformer" in moves) == (offload == "all") and ("vae" in moves) == (offload == "all")


def test_offload_follows_the_component_order():
    """The VLM and the SCB run before the DiT: "encoder" offloads exactly them (model_cpu_offload_seq)."""
    assert DeepGenPipeline.model_cpu_offload_seq == "vlm->scb->transformer->vae"
    assert DeepGenPipeline.offloaded("none") == ()
    assert DeepGenPipeline.offloaded("encoder") == ("vlm", "scb")
    assert DeepGenPipeline.offloaded("all") == ("vlm", "scb", "transformer", "vae")


def test_offload_mode_is_validated(plain):
    with pytest.raises(DeepGenInputError, match="offload"):
        DeepGenPipeline(plain.vlm, plain.tokenizer, plain.scb, plain.transformer, plain.vae, offload="gpu")


def test_cached_rerun_does_not_re_encode_references(plain, monkeypatch):
    cond = plain.encode("make it blue", images=[_ref_image()], max_side=64)
    calls = []
    original = plain.vae.encode
    monkeypatch.setattr(plain.vae, "encode", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    first = plain(conditioning=cond, steps=1, seed=1)
    second = plain(conditioning=cond, steps=1, seed=1)
    torch.testing.assert_close(first.latents, second.latents, atol=0, rtol=0)
    assert len(calls) == 1
    plain(conditioning=plain.encode("make it red", images=[_ref_image()], max_side=64), steps=1, seed=1)
    assert len(calls) == 2  # new references (a new encode) are encoded again


def test_fp8_dit_weights(release):
    bf16 = DeepGenPipeline.from_pretrained(release, dtype=None, device="cpu")
    fp8 = DeepGenPipeline.from_pretrained(release, dtype=None, device="cpu", dit_weights="fp8_e4m3fn")
    linears = [m for m in fp8.transformer.dit.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    a = bf16("a lighthouse", "", width=32, height=32, steps=2, seed=0).images
    b = fp8("a lighthouse", "", width=32, height=32, steps=2, seed=0).images
    assert b.dtype == torch.float32 and 0 < (a - b).abs().mean() < 0.1
    with pytest.raises(DeepGenInputError, match="dit_weights"):
        DeepGenPipeline.from_pretrained(release, device="cpu", dit_weights="int4")
