"""End-to-end engine tests on the tiny fixtures: every release layout gives the same images."""
import pytest
import torch

from deepgen_model import DeepGenInputError, DeepGenPipeline
from deepgen_model.constants import EDIT_NEGATIVE
from deepgen_model.convert import convert
from deepgen_model.sampling import make_noise

STEPS = 3


def _image(seed: int, h: int, w: int) -> torch.Tensor:
    return torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def converted(tiny_layouts, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    convert(tiny_layouts["native_lora_new"], out, vlm_base=tiny_layouts["qwen"], dit_base=tiny_layouts["unipic2"],
            dtype="fp32")
    return out


@pytest.fixture(scope="module")
def pipes(tiny_layouts, converted):
    native = dict(vlm_base=tiny_layouts["qwen"], dit_base=tiny_layouts["unipic2"])
    load = lambda path, **kw: DeepGenPipeline.from_pretrained(path, dtype="fp32", device="cpu", **kw)  # noqa: E731
    return {
        "diffusers": load(tiny_layouts["diffusers"]),
        "native_lora_new": load(tiny_layouts["native_lora_new"], **native),
        "native_lora_legacy": load(tiny_layouts["native_lora_legacy"], **native),
        "converted": load(converted),
    }


def test_all_layouts_generate_identical_images(pipes):
    outs = {name: pipe("a red cat on a blue mat", width=64, height=48, steps=STEPS, seed=7)
            for name, pipe in pipes.items()}
    ref = outs.pop("diffusers")
    assert ref.images.shape == (1, 48, 64, 3)
    assert ref.images.std() > 1e-3  # a real picture, not a constant
    for name, out in outs.items():
        torch.testing.assert_close(out.latents, ref.latents, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(out.images, ref.images, atol=1e-5, rtol=1e-5, msg=name)


def test_all_layouts_edit_identically(pipes):
    refs = [_image(1, 80, 128), _image(2, 64, 64)]
    outs = {name: pipe("put the cat into the scene", images=refs, width=64, height=64, steps=2, seed=3, max_side=96)
            for name, pipe in pipes.items()}
    ref = outs.pop("diffusers")
    for name, out in outs.items():
        torch.testing.assert_close(out.images, ref.images, atol=1e-5, rtol=1e-5, msg=name)


def test_native_without_lora_uses_stock_qwen_and_differs(tiny_layouts, pipes):
    stock = DeepGenPipeline.from_pretrained(tiny_layouts["native"], vlm_base=tiny_layouts["qwen"],
                                            dit_base=tiny_layouts["unipic2"], dtype="fp32", device="cpu")
    a = stock.encode("a red cat")
    b = pipes["diffusers"].encode("a red cat")
    assert not torch.allclose(a.seq, b.seq, atol=1e-4)  # the LoRA matters, so the merge is tested above


def test_default_negatives_follow_the_authors(pipes):
    pipe = pipes["diffusers"]
    t2i = pipe.encode("a cat")
    assert t2i.prompt_text[1].endswith("Generate an image: <|im_end|>\n<|im_start|>assistant\n")
    edit = pipe.encode("make it blue", images=[_image(0, 64, 64)], max_side=64)
    assert EDIT_NEGATIVE in edit.prompt_text[1]


def test_rerun_with_cached_conditioning_equals_full_run(pipes):
    pipe = pipes["diffusers"]
    cond = pipe.encode("a lighthouse at dusk")
    full = pipe("a lighthouse at dusk", width=32, height=32, steps=STEPS, seed=11)
    cached = pipe(conditioning=cond, width=32, height=32, steps=STEPS, seed=11)
    torch.testing.assert_close(cached.latents, full.latents, atol=0, rtol=0)
    other_seed = pipe(conditioning=cond, width=32, height=32, steps=STEPS, seed=12)
    assert not torch.allclose(other_seed.latents, full.latents)


def test_one_reference_sets_output_size(pipes):
    out = pipes["diffusers"]("make it night", images=[_image(5, 80, 128)], width=512, height=512, steps=1, seed=0,
                             max_side=96)
    assert out.images.shape == (1, 64, 96, 3)  # 128x80 with max side 96 -> 96x64 (docs/inference.md#reference-images)


def test_noise_is_the_documented_cpu_draw(pipes):
    seen = []
    pipes["diffusers"]("x", width=32, height=32, steps=2, seed=123, callback=lambda i, n, x, x0: seen.append(i))
    assert seen == [0, 1]
    expected = torch.randn((1, 16, 4, 4), generator=torch.Generator("cpu").manual_seed(123))
    torch.testing.assert_close(make_noise(123, 1, 32, 32), expected, atol=0, rtol=0)


def test_callback_exception_cancels(pipes):
    class Stop(Exception):
        pass

    def cb(i, n, x, x0):
        raise Stop

    with pytest.raises(Stop):
        pipes["diffusers"]("x", width=32, height=32, steps=3, seed=0, callback=cb)


@pytest.mark.parametrize("size", [(40, 32), (32, 20)])
def test_sizes_must_be_multiples_of_16(pipes, size):
    with pytest.raises(DeepGenInputError, match="multiples of 16"):
        pipes["diffusers"]("x", width=size[0], height=size[1], steps=1)


def test_latent_beyond_position_table_is_refused(pipes):
    limit_px = 8 * pipes["diffusers"].transformer.max_latent_side
    with pytest.raises(DeepGenInputError, match=rf"at most {limit_px} px per side; the nearest size it can make is "
                                                  rf"{limit_px}x32 px"):
        pipes["diffusers"]("x", width=limit_px + 16, height=32, steps=1)


@pytest.mark.parametrize("kwargs", [{"cfg_scale": float("nan")}, {"cfg_scale": float("inf")}, {"cfg_scale": -1.0},
                                    {"cfg_scale": 100.5}, {"steps": 0}, {"steps": 1001}, {"steps": 2.5}, {"seed": -1}])
def test_the_python_api_refuses_what_the_nodes_refuse_before_running(pipes, monkeypatch, kwargs):
    """The same checks as the nodes (deepgen_model/inputs.py, one implementation), before the VLM runs:
    cfg_scale=float("nan") used to pass and sample a NaN picture."""
    from deepgen_model import inputs

    pipe = pipes["diffusers"]
    monkeypatch.setattr(pipe, "encode", lambda *a, **k: pytest.fail("encoded before checking the inputs"))
    (name, value), = kwargs.items()
    check = {"cfg_scale": lambda: inputs.check_cfg(value, "cfg_scale"), "steps": lambda: inputs.check_steps(value),
             "seed": lambda: inputs.check_seed(value)}[name]
    with pytest.raises(DeepGenInputError) as node_side:
        check()
    with pytest.raises(DeepGenInputError) as api_side:
        pipe("x", width=32, height=32, **kwargs)
    assert str(api_side.value) == str(node_side.value) and str(api_side.value).startswith(f"{name} ")
