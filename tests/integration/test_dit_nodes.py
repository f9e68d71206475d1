"""DeepGenDiTLoader / DeepGenVAELoader and the DeepGen MODEL's ComfyUI integration (real ComfyUI 0.3.75).

Every loaded model is compared with the tiny fixture's own weights/modules (deepgen_model/tiny.py),
and every VAE result with diffusers' AutoencoderKL run directly.
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

SUB = "h6dit"
RELEASE, SHIFTED, UNIPIC2, NATIVE = (f"{SUB}/DeepGen-1.0-diffusers", f"{SUB}/DeepGen-shift2",
                                     f"{SUB}/UniPic2-SD3.5M-Kontext-2B", f"{SUB}/DeepGen-1.0/model.pt")
CONVERTED = f"{SUB}/converted"
SD3_VAE_FILE = "h6_sd3_vae_random.safetensors"
SCALE, SHIFT = 1.5305, 0.0609


@pytest.fixture(scope="module")
def layouts(tiny, comfy_models):
    from deepgen_model import tiny as deepgen_tiny
    from deepgen_model.convert import convert

    root = comfy_models / "deepgen"
    if not (root / RELEASE).exists():
        deepgen_tiny.write_diffusers_release(root / RELEASE, tiny)
        shifted = copy.copy(tiny)
        shifted.scheduler_config = {**tiny.scheduler_config, "shift": 2.0}
        deepgen_tiny.write_diffusers_release(root / SHIFTED, shifted)
        deepgen_tiny.write_unipic2_base(root / UNIPIC2, tiny)
        deepgen_tiny.write_native_model_pt(root / NATIVE, tiny)
        convert(root / RELEASE, root / CONVERTED, components=("dit", "vae"))
    return root


@pytest.fixture(scope="module")
def node(comfy_inprocess, layouts):
    mappings = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS
    if "DeepGenDiTLoader" not in mappings:
        pytest.fail("the pack registered no DeepGenDiTLoader: wire nodes/loaders.py's NODES into the pack")
    return lambda node_id, **kw: mappings[node_id].execute(**kw)[0]


def _dit(node, name=RELEASE, base="none", dtype="fp32"):
    return node("DeepGenDiTLoader", dit_name=name, dit_base=base, weight_dtype=dtype)


def _dit_state(patcher) -> dict:
    return patcher.model.diffusion_model.state_dict()


def _same_weights(patcher, reference, exact=True):
    """The MODEL holds the reference's weights in ComfyUI's MMDiT names (deepgen_model.mmdit_format)."""
    from deepgen_model.mmdit_format import to_mmdit

    got, want = _dit_state(patcher), to_mmdit(dict(reference.state_dict()), reference.config.num_layers)
    assert got.keys() == want.keys()
    for k in want:
        a, b = got[k].float(), want[k].float()
        assert torch.equal(a, b) if exact else torch.allclose(a, b, atol=1e-2, rtol=1e-2), k


# ------------------------------------------------------------------ public schema (ids, names, order)

def test_node_schemas(comfy_inprocess, layouts):
    m = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS

    def required(node_id):
        return list(m[node_id].INPUT_TYPES()["required"])

    assert required("DeepGenDiTLoader") == ["dit_name", "dit_base", "weight_dtype"]
    assert required("DeepGenVAELoader") == ["vae_name"]
    assert required("DeepGenSampler") == ["model", "positive", "negative", "latent", "seed", "steps", "cfg"]
    assert required("DeepGenScheduler") == ["model", "steps"]
    outputs = {n: list(m[n].RETURN_TYPES) for n in ("DeepGenDiTLoader", "DeepGenVAELoader", "DeepGenSampler",
                                                    "DeepGenScheduler")}
    assert outputs == {"DeepGenDiTLoader": ["MODEL"], "DeepGenVAELoader": ["VAE"], "DeepGenSampler": ["LATENT"],
                       "DeepGenScheduler": ["SIGMAS"]}
    sampler = m["DeepGenSampler"].INPUT_TYPES()["required"]
    assert sampler["seed"][1]["max"] == 2**64 - 1 and sampler["seed"][1]["control_after_generate"]
    assert sampler["steps"][1]["default"] == 50 and sampler["cfg"][1]["default"] == 4.0
    loader = m["DeepGenDiTLoader"].INPUT_TYPES()["required"]
    assert RELEASE in loader["dit_name"][1]["options"] and NATIVE in loader["dit_name"][1]["options"]
    assert loader["weight_dtype"][1]["options"] == ["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn"]
    for node_id in ("DeepGenDiTLoader", "DeepGenVAELoader", "DeepGenSampler", "DeepGenScheduler"):
        assert m[node_id].CATEGORY.startswith("DeepGen/")
        for name, spec in m[node_id].INPUT_TYPES()["required"].items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


# ------------------------------------------------------------------ DiT loader -> MODEL

def test_release_loads_as_a_flow_model(node, tiny):
    import comfy.latent_formats
    import comfy.model_patcher
    import comfy.model_sampling

    patcher = _dit(node)
    assert isinstance(patcher, comfy.model_patcher.ModelPatcher)
    model = patcher.model
    assert isinstance(model.latent_format, comfy.latent_formats.SD3)
    sampling = patcher.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow) and sampling.shift == 3.0
    assert sampling.timestep(torch.tensor(0.5)).item() == 500.0  # t = sigma * 1000 (docs/inference.md#scheduler)
    _same_weights(patcher, tiny.dit)
    assert patcher.model_dtype() == torch.float32 and model.manual_cast_dtype is None
    assert _dit(node, SHIFTED).get_model_object("model_sampling").shift == 2.0  # the release's scheduler config


def test_native_model_pt_with_unipic2_base(node, tiny):
    patcher = _dit(node, NATIVE, base=UNIPIC2)
    _same_weights(patcher, tiny.dit)  # model.pt's fine-tuned transformer.*, not the base DiT
    assert not torch.equal(_dit_state(patcher)["final_layer.linear.weight"], tiny.dit_base.state_dict()["proj_out.weight"])
    assert patcher.get_model_object("model_sampling").shift == 3.0


@pytest.mark.parametrize("name", [CONVERTED, f"{CONVERTED}/deepgen_dit.safetensors"])
def test_converted_file_and_folder(node, tiny, name):
    patcher = _dit(node, name)
    _same_weights(patcher, tiny.dit)
    assert patcher.get_model_object("model_sampling").shift == 3.0


@pytest.mark.parametrize("native_bf16", [False, True])
def test_weight_dtypes(node, tiny, comfy_inprocess, monkeypatch, native_bf16):
    """The CPU compute dtype follows precision.cpu_compute_dtype: fp32 without native bf16 (ComfyUI's own
    CPU choice), bf16 with it; fp16 weights always compute in fp32 on a CPU."""
    import sys

    precision = sys.modules[f"{comfy_inprocess.pack.__name__}.deepgen_model.precision"]
    ops = sys.modules[f"{comfy_inprocess.pack.__name__}.nodes.comfy_ops"]
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    bf16_compute = None if native_bf16 else torch.float32  # None: computes in the stored bf16
    for name, dtype, compute in (("bf16", torch.bfloat16, bf16_compute), ("fp16", torch.float16, torch.float32)):
        patcher = _dit(node, dtype=name)
        assert patcher.model_dtype() == dtype
        assert patcher.model.manual_cast_dtype == compute
        assert ops.compute_dtype(patcher) == (compute or dtype)  # the probe the NaN message names
        _same_weights(patcher, tiny.dit, exact=False)
    auto = _dit(node, dtype="auto")
    assert auto.model_dtype() == (torch.bfloat16 if native_bf16 else torch.float32)  # ComfyUI's is fp32 on a CPU
    assert auto.model.manual_cast_dtype is None
    assert ops.compute_dtype(auto) == auto.model_dtype()
    x, sigma, conds = _inputs(auto.model, seed=3)
    with torch.no_grad():
        assert torch.isfinite(auto.model.apply_model(x, sigma, **conds)).all()


def test_fp8_weight_storage_computes_through_manual_cast(node, tiny):
    """fp8_e4m3fn: Linear weights stored in fp8 (bf16 elsewhere), computed in fp32 on a CPU; close to bf16."""
    fp8, bf16 = _dit(node, dtype="fp8_e4m3fn"), _dit(node, dtype="bf16")
    dit = fp8.model.diffusion_model
    linears = [m for m in dit.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    assert dit.x_embedder.proj.weight.dtype == dit.pos_embed.dtype == torch.bfloat16
    assert fp8.model.manual_cast_dtype in (torch.float32, torch.bfloat16)  # nothing computes in fp8
    assert fp8.model_size() < 0.8 * bf16.model_size()  # tiny: the position table weighs in; real size ~0.55
    x, sigma, conds = _inputs(fp8.model, seed=2)
    with torch.no_grad():
        a, b = fp8.model.apply_model(x, sigma, **conds), bf16.model.apply_model(x, sigma, **conds)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    rel = ((a - b).norm() / b.norm()).item()
    assert 0 < rel < 0.1, rel  # lossy, measured in docs/performance.md


def test_core_torch_compile_model_wraps_the_deepgen_model(node, comfy_inprocess):
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    model = _dit(node)
    compiled = TorchCompileModel.execute(model=model, backend="inductor")[0]
    assert compiled is not model and compiled.model is model.model  # a clone: the plain MODEL is untouched
    from comfy.patcher_extension import WrappersMP

    assert compiled.wrappers.get(WrappersMP.APPLY_MODEL) and not model.wrappers.get(WrappersMP.APPLY_MODEL)


@pytest.mark.skipif(not os.environ.get("DEEPGEN_TEST_COMPILE"), reason="inductor compile takes minutes on CI CPUs; "
                    "set DEEPGEN_TEST_COMPILE=1")
def test_core_torch_compile_model_runs_on_cpu(node, comfy_inprocess):
    """Core TorchCompileModel (inductor) on the DeepGen MODEL: sampling runs and matches eager.
    The first run pays the compilation (docs/performance.md states what it cost here)."""
    import time

    import comfy.sample
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    model = _dit(node)
    compiled = TorchCompileModel.execute(model=model, backend="inductor")[0]
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 5, 32, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    neg = [[torch.randn(1, 5, 32, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]]
    latent = torch.zeros(1, 16, 8, 8)
    noise = torch.randn(1, 16, 8, 8, generator=g)

    def run(m):
        t = time.perf_counter()
        out = comfy.sample.sample(m, noise, 2, 4.0, "euler", "simple", pos, neg, latent, seed=0,
                                  disable_pbar=True)
        return out, time.perf_counter() - t

    eager, _ = run(model)
    first, first_s = run(compiled)
    again, again_s = run(compiled)
    print(f"TorchCompileModel first run {first_s:.1f} s, second {again_s:.2f} s")
    torch.testing.assert_close(first, eager, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, eager, atol=1e-4, rtol=1e-4)


def test_unknown_model_is_a_validation_error(comfy_inprocess, layouts):
    prompt = {"1": {"class_type": "DeepGenDiTLoader", "inputs": {"dit_name": "nope/missing", "dit_base": "none",
                                                                 "weight_dtype": "auto"}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    ok, error, _, node_errors = comfy_inprocess.validate(prompt)
    assert not ok
    text = json.dumps(node_errors)
    assert "nope/missing" in text and "deepgen" in text, text


def _inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 8, 8, generator=g)
    sigma = torch.tensor([0.7, 0.7])
    return x, sigma, {"c_crossattn": torch.randn(2, 5, 32, generator=g), "y": torch.randn(2, 32, generator=g),
                      "ref_latents": [torch.randn(2, 16, 4, 6, generator=g)]}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lowvram_partial_load_matches_full_load(node, dtype):
    """Forced lowvram: every comfy.ops layer of the MMDiT casts its weight per call; same result."""
    patcher = _dit(node, dtype=dtype)
    x, sigma, conds = _inputs(patcher.model)
    with torch.no_grad():
        full = patcher.model.apply_model(x, sigma, **conds)
        patcher.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=1)
        try:
            assert patcher.model.model_lowvram
            casting = [m for m in patcher.model.diffusion_model.modules() if getattr(m, "comfy_cast_weights", False)]
            cast_ops = patcher.model.manual_cast_dtype is not None  # bf16 on a CPU without native bf16
            assert {type(m).__name__ for m in casting} >= {"Linear", "Conv2d"}
            assert {type(m).comfy_cast_weights for m in casting} == {cast_ops}  # the classes' own mode
            partial = patcher.model.apply_model(x, sigma, **conds)
        finally:
            patcher.unpatch_model(device_to=torch.device("cpu"))
    assert torch.equal(partial, full)


def test_apply_model_is_the_engine_forward(node, tiny):
    """BaseModel.apply_model(x, sigma) = x - sigma * v with v = DeepGenTransformer(x, 1000 sigma, ...)."""
    from deepgen_model.transformer import DeepGenTransformer

    patcher = _dit(node)
    x, sigma, conds = _inputs(patcher.model, seed=1)
    engine = DeepGenTransformer(copy.deepcopy(tiny.dit))
    refs = [(conds["ref_latents"][0][i],) for i in range(2)]
    with torch.no_grad():
        got = patcher.model.apply_model(x, sigma, **conds)
        v = engine(x, sigma * 1000, conds["c_crossattn"], conds["y"], [list(r) for r in refs])
    assert (got - (x - sigma[:, None, None, None] * v)).abs().max() <= 1e-5


# ------------------------------------------------------------------ VAE

@pytest.fixture(scope="module")
def latent():
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5))  # raw VAE space (LATENT)


def test_vae_loader_decodes_like_the_engine(node, tiny, latent):
    from deepgen_model.vae import decode, encode_reference

    for name in (RELEASE, UNIPIC2, CONVERTED, f"{CONVERTED}/deepgen_vae.safetensors"):
        vae = node("DeepGenVAELoader", vae_name=name)
        image = vae.decode(latent)
        assert image.shape == (1, 64, 64, 3)
        want = decode(tiny.vae, (latent - SHIFT) * SCALE)
        assert (image.float() - want).abs().max() <= 1e-4, name
    # encoder too (posterior mean; ComfyUI returns raw latents)
    pixels = want[:, :, :, :3]
    raw = vae.encode(pixels)
    ref = encode_reference(tiny.vae, pixels[0].movedim(-1, 0) * 2 - 1)
    assert (raw[0] - (ref / SCALE + SHIFT)).abs().max() <= 1e-4


def test_vae_of_another_group_count_is_refused_naming_its_config(comfy_inprocess, tmp_path):
    """A valid diffusers AutoencoderKL with 16 GroupNorm groups: ComfyUI's VAE blocks build 32 (the SD3 VAE's),
    so DeepGen refuses it, naming the config and the fix, instead of patching ComfyUI's GroupNorm."""
    import sys
    from diffusers import AutoencoderKL

    from deepgen_model import tiny as deepgen_tiny

    pack = comfy_inprocess.pack.__name__  # the pack's own modules (its DeepGenLoadError is not ours)
    comfy_models, loading, errors = (sys.modules[f"{pack}.{m}"] for m in
                                     ("nodes.comfy_models", "deepgen_model.loading", "deepgen_model.errors"))
    AutoencoderKL(**{**deepgen_tiny.TINY_VAE, "norm_num_groups": 16}).save_pretrained(tmp_path / "vae")
    with pytest.raises(errors.DeepGenLoadError) as e:
        comfy_models.comfy_vae(loading.load_vae_folder(tmp_path))
    msg = str(e.value)
    assert f"VAE config of {tmp_path / 'vae'} has norm_num_groups 16" in msg, msg
    assert "32 groups" in msg and msg.endswith("use the release's vae/ folder.")


def test_core_vae_decode_tiled_works_with_the_deepgen_vae(node, comfy_inprocess):
    """The 1024² memory saver is core VAE Decode (Tiled): it runs on our VAE and matches the plain decode
    away from the tile seams (tiles blend, so it is close, not identical)."""
    import nodes as comfy_nodes

    vae = node("DeepGenVAELoader", vae_name=RELEASE)
    samples = {"samples": torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(8))}
    plain = comfy_nodes.VAEDecode().decode(vae, samples)[0]
    tiled = comfy_nodes.VAEDecodeTiled().decode(vae, samples, tile_size=128, overlap=32)[0]
    assert tiled.shape == plain.shape == (1, 256, 256, 3)
    assert (tiled - plain).abs().mean() < 0.05


def test_vae_decode_graph_saves_the_engine_image(comfy_inprocess, tiny, latent, layouts):
    """DeepGenVAELoader + core VAEDecode + SaveImage: the PNG is the engine image quantised to 8 bits."""
    from deepgen_model.vae import decode

    path = comfy_inprocess.folder_paths.get_input_directory() + "/h6_latent.latent"
    save_file({"latent_tensor": latent.contiguous(), "latent_format_version_0": torch.tensor([])}, path)
    prompt = {
        "1": {"class_type": "DeepGenVAELoader", "inputs": {"vae_name": RELEASE}},
        "2": {"class_type": "LoadLatent", "inputs": {"latent": "h6_latent.latent"}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "h6_vae"}},
    }
    ok, outputs, msgs = comfy_inprocess.run(prompt)
    assert ok, msgs
    (img,) = outputs["4"]["images"]
    png = np.asarray(Image.open(comfy_inprocess.output_dir / img["subfolder"] / img["filename"]).convert("RGB"))
    want = np.clip(255.0 * decode(tiny.vae, (latent - SHIFT) * SCALE)[0].numpy(), 0, 255).astype(np.uint8)
    assert np.abs(png.astype(int) - want.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def sd3_vae(comfy_models):
    """A real-architecture SD3 VAE (random weights) saved as one diffusers-key safetensors in models/vae/."""
    from diffusers import AutoencoderKL
    from deepgen_model.configs import get

    torch.manual_seed(0)
    ae = AutoencoderKL(**{k: v for k, v in get("vae").items()}).eval()
    path = comfy_models / "vae" / SD3_VAE_FILE
    path.parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(path))
    return ae


def test_core_vae_loader_takes_a_real_sd3_vae(comfy_inprocess, sd3_vae, latent):
    """Core VAELoader accepts the SD3 VAE file; it (and our config-derived VAE) decode like diffusers."""
    import sys

    latent = latent[:, :, :4, :4]  # 32 px: the real-size decoder is slow on a CPU
    vae = comfy_inprocess.nodes.VAELoader().load_vae(SD3_VAE_FILE)[0]
    with torch.no_grad():
        want = ((sd3_vae.decode(latent).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert (vae.decode(latent).float() - want).abs().max() <= 1e-3
    dit_module = sys.modules[comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["DeepGenVAELoader"].__module__]
    ours = dit_module.comfy_vae(sd3_vae)
    assert (ours.decode(latent).float() - want).abs().max() <= 1e-3


def test_bench_dit_measures_the_comfyui_side(release, comfy_dir, tmp_path):
    """bench/dit.py (docs/performance.md) loads the pack as ComfyUI does and times the MODEL's calls."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "dit.json"
    proc = subprocess.run([sys.executable, str(repo / "bench" / "dit.py"), "--release", str(release), "--size", "64",
                           "--calls", "1", "--json", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DEEPGEN_COMFY_DIR": str(comfy_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["side"] == "comfy" and r["comfy_attention"] and r["t2i_call_cpu_s"]["median"] > 0
