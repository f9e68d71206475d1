"""The tiny fixture factory writes what docs/inference.md#checkpoints describes, and every file loads back in this transformers leg."""
import ast
import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from deepgen_model import tiny as dt

LM_PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
VIT_PROJ = ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
CONNECTOR_LAYER_KEYS = [f"{m}.{p}" for m in ("layer_norm1", "layer_norm2", "self_attn.q_proj", "self_attn.k_proj",
                                             "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
                        for p in ("weight", "bias")]


def read_safetensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def read_vlm_folder(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(read_safetensors(folder / shard))
    assert set(state) == set(index["weight_map"])
    return state


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_tiny_imports_nothing_else_of_the_engine():
    """deepgen_model/tiny.py lives in the engine package (the demo and benchmarks use it) but stays an
    independent reference: a tiny model built with the engine's own code could not catch its bugs."""
    tree = ast.parse(Path(dt.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):  # module level and inside functions
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: relative import from {node.module!r}"
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    tops = {name.split(".")[0] for name in imported}
    assert "deepgen_model" not in tops and "deepgen_batch" not in tops and "comfy" not in tops, sorted(imported)
    third_party = tops - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"torch", "transformers", "diffusers", "tokenizers", "safetensors"}, sorted(third_party)


def test_connector_file_has_the_release_keys(tiny_layouts):
    folder = tiny_layouts["diffusers"] / "connector"
    sd = read_safetensors(folder / "model.safetensors")
    expected = {f"connector.layers.{i}.{k}" for i in range(6) for k in CONNECTOR_LAYER_KEYS}
    expected |= {f"projector_{n}.{p}" for n in (1, 2, 3) for p in ("weight", "bias")} | {"meta_queries"}
    assert set(sd) == expected and len(sd) == 103
    assert all(t.dtype == torch.float32 for t in sd.values())
    assert sd["meta_queries"].shape == (128, 64)
    assert sd["projector_1.weight"].shape == (64, 6 * 64)
    assert sd["projector_2.weight"].shape == (32, 64) and sd["projector_3.weight"].shape == (32, 64)
    assert sd["connector.layers.0.mlp.fc1.weight"].shape == (94, 64)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg == {"hidden_size": 64, "intermediate_size": 94, "num_hidden_layers": 6, "num_attention_heads": 32,
                   "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "attention_dropout": 0.0}


def test_diffusers_release_layout(tiny_layouts, tiny):
    root = tiny_layouts["diffusers"]
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == ["deepgen_pipeline", "DeepGenPipeline"]
    assert index["transformer"] == ["diffusers", "SD3Transformer2DModel"]
    for sub in ("transformer/diffusion_pytorch_model.safetensors", "transformer/config.json",
                "vae/diffusion_pytorch_model.safetensors", "vae/config.json", "scheduler/scheduler_config.json",
                "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "vlm/config.json"):
        assert (root / sub).is_file(), sub
    dit = read_safetensors(root / "transformer/diffusion_pytorch_model.safetensors")
    assert_same(dit, {k: v for k, v in tiny.dit.state_dict().items()})
    assert "pos_embed.pos_embed" in dit and not any(k.startswith("transformer.") for k in dit)
    sched = json.loads((root / "scheduler/scheduler_config.json").read_text())
    assert sched["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert sched["shift"] == 3.0 and sched["use_dynamic_shifting"] is False and sched["num_train_timesteps"] == 1000


def test_vlm_folders_use_legacy_names_without_lm_head_or_lora(tiny_layouts, tiny):
    merged = read_vlm_folder(tiny_layouts["diffusers"] / "vlm")
    base = read_vlm_folder(tiny_layouts["qwen"])
    for sd in (merged, base):
        assert all(k.startswith(("model.", "visual.")) for k in sd)
        assert not any("language_model" in k or "lora" in k or k.startswith("lm_head") for k in sd)
        assert {"model.embed_tokens.weight", "model.norm.weight", "visual.patch_embed.proj.weight",
                "visual.merger.mlp.0.weight", "model.layers.35.mlp.down_proj.weight",
                "visual.blocks.1.attn.qkv.weight"} <= set(sd)
        assert sd["model.embed_tokens.weight"].shape == (len(tiny.tokenizer), 64)
    assert set(merged) == set(base)
    assert_same(merged, tiny.vlm_merged_state)
    runtime = {k: v for k, v in tiny.vlm_base.state_dict().items() if k != "lm_head.weight"}
    assert len(base) == len(runtime)
    assert torch.equal(base["model.layers.7.self_attn.q_proj.weight"],
                       runtime["model.language_model.layers.7.self_attn.q_proj.weight"])
    assert torch.equal(base["visual.merger.mlp.2.weight"], runtime["model.visual.merger.mlp.2.weight"])


def test_merged_weights_are_base_plus_two_b_a(tiny_layouts, tiny):
    """Recomputed here from the LoRA dict: linears W + 2 B@A, embedding E + 2 (B@A)^T, lm_head untouched."""
    merged = read_vlm_folder(tiny_layouts["diffusers"] / "vlm")
    base = read_vlm_folder(tiny_layouts["qwen"])
    lora = tiny.lora
    changed = set()
    for i in (0, 17, 35):
        for proj in LM_PROJ:
            p = f"lmm.model.language_model.layers.{i}.{proj}"
            want = base[f"model.layers.{i}.{proj}.weight"] + 2.0 * (lora[p + ".lora_B.default.weight"] @
                                                                   lora[p + ".lora_A.default.weight"])
            torch.testing.assert_close(merged[f"model.layers.{i}.{proj}.weight"], want, rtol=0, atol=1e-6)
    for name in [f"blocks.{i}.{p}" for i in range(2) for p in VIT_PROJ] + ["merger.mlp.0", "merger.mlp.2"]:
        p = f"lmm.model.visual.{name}"
        want = base[f"visual.{name}.weight"] + 2.0 * (lora[p + ".lora_B.default.weight"] @ lora[p + ".lora_A.default.weight"])
        torch.testing.assert_close(merged[f"visual.{name}.weight"], want, rtol=0, atol=1e-6)
        changed.add(f"visual.{name}.weight")
    e = "lmm.model.language_model.embed_tokens"
    want = base["model.embed_tokens.weight"] + 2.0 * (lora[e + ".lora_embedding_B.default"] @
                                                      lora[e + ".lora_embedding_A.default"]).T
    torch.testing.assert_close(merged["model.embed_tokens.weight"], want, rtol=0, atol=1e-6)
    # the delta is measurable, and what has no LoRA (norms, biases, patch_embed) is unchanged
    assert (merged["model.layers.0.self_attn.q_proj.weight"] - base["model.layers.0.self_attn.q_proj.weight"]).abs().max() > 0.02
    for k in ("model.norm.weight", "model.layers.3.input_layernorm.weight", "model.layers.3.self_attn.q_proj.bias",
              "visual.patch_embed.proj.weight", "visual.merger.ln_q.weight", "visual.blocks.0.attn.qkv.bias"):
        assert torch.equal(merged[k], base[k]), k
    n_diff = sum(not torch.equal(merged[k], base[k]) for k in base)
    assert n_diff == 36 * 7 + 1 + 2 * 5 + 2  # every targeted module except lm_head


def test_lora_tensor_names_and_shapes(tiny):
    lora = tiny.lora
    assert len(lora) == 2 * (36 * 7 + 1 + 1 + 2 * 5 + 2)
    r = dt.TINY_LORA_RANK
    assert lora["lmm.model.language_model.embed_tokens.lora_embedding_A.default"].shape == (r, len(tiny.tokenizer))
    assert lora["lmm.model.language_model.embed_tokens.lora_embedding_B.default"].shape == (64, r)
    assert lora["lmm.model.language_model.layers.35.self_attn.k_proj.lora_B.default.weight"].shape == (32, r)
    assert lora["lmm.model.language_model.layers.0.mlp.down_proj.lora_A.default.weight"].shape == (r, 128)
    assert lora["lmm.model.visual.blocks.1.attn.qkv.lora_B.default.weight"].shape == (96, r)
    assert lora["lmm.model.visual.merger.mlp.0.lora_A.default.weight"].shape == (r, 128)
    assert lora["lmm.lm_head.lora_B.default.weight"].shape == (len(tiny.tokenizer), r)
    assert all(t.std() > 0.01 for t in lora.values())  # nonzero A and B: every LoRA has an effect


def test_native_model_pt_without_lora(tiny_layouts, tiny):
    sd = torch.load(tiny_layouts["native"], map_location="cpu", weights_only=True)
    dit = tiny.dit.state_dict()
    assert {k for k in sd if k.startswith("transformer.")} == {"transformer." + k for k in dit}
    assert "transformer.pos_embed.pos_embed" in sd
    for k, v in dit.items():
        assert torch.equal(sd["transformer." + k], v), k
    rest = {k: v for k, v in sd.items() if not k.startswith("transformer.")}
    assert_same(rest, tiny.scb_state)
    assert len(rest) == 103 and not any(k.startswith("lmm.") for k in sd)
    assert (tiny_layouts["native"].parent / "config.json").is_file()


@pytest.mark.parametrize("variant,lm,vit", [("native_lora_new", "lmm.model.language_model.", "lmm.model.visual."),
                                            ("native_lora_legacy", "lmm.model.", "lmm.visual.")])
def test_native_model_pt_lora_naming(tiny_layouts, tiny, variant, lm, vit):
    sd = torch.load(tiny_layouts[variant], map_location="cpu", weights_only=True)
    lora = {k: v for k, v in sd.items() if k.startswith("lmm.")}
    assert len(lora) == len(tiny.lora) and len(sd) == len(lora) + 103 + len(tiny.dit.state_dict())
    assert all(k.startswith((lm, vit, "lmm.lm_head.")) for k in lora)
    if variant.endswith("legacy"):
        assert not any("language_model" in k or k.startswith("lmm.model.visual.") for k in lora)
    q = "layers.4.self_attn.q_proj.lora_A.default.weight"
    assert torch.equal(sd[lm + q], tiny.lora["lmm.model.language_model." + q])
    assert torch.equal(sd[vit + "merger.mlp.2.lora_B.default.weight"],
                       tiny.lora["lmm.model.visual.merger.mlp.2.lora_B.default.weight"])
    assert lm + "embed_tokens.lora_embedding_A.default" in sd and "lmm.lm_head.lora_A.default.weight" in sd


def test_unipic2_base_has_a_different_dit(tiny_layouts, tiny):
    root = tiny_layouts["unipic2"]
    base = read_safetensors(root / "transformer/diffusion_pytorch_model.safetensors")
    assert_same(base, tiny.dit_base.state_dict())
    assert set(base) == set(tiny.dit.state_dict())
    assert not torch.equal(base["proj_out.weight"], tiny.dit.state_dict()["proj_out.weight"])
    assert (root / "vae/config.json").is_file() and (root / "scheduler/scheduler_config.json").is_file()


@pytest.mark.parametrize("where", ["qwen", "diffusers"])
def test_tokenizer_loads_and_tokenizes_like_qwen(tiny_layouts, tiny, where):
    from transformers import AutoTokenizer

    folder = tiny_layouts[where] / ("tokenizer" if where == "diffusers" else "")
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == dt.TINY_VOCAB_SIZE == tiny.vlm_base.get_input_embeddings().weight.shape[0]
    for t, i in dt.TINY_TOKEN_IDS.items():
        assert tok.convert_tokens_to_ids(t) == i
        assert tok(t, add_special_tokens=True).input_ids == [i]
    assert tok.pad_token_id == dt.TINY_TOKEN_IDS["<|endoftext|>"] and tok.eos_token == "<|im_end|>"
    assert tok.bos_token is None
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>\nMake the sky purple.<|im_end|>\n"
    ids = tok(text).input_ids
    assert ids.count(dt.TINY_TOKEN_IDS["<|image_pad|>"]) == 2 and ids[0] == dt.TINY_TOKEN_IDS["<|im_start|>"]
    for s in ("Generate an image: a red cat", "café 一只红色的猫 🐱", dt.EDIT_NEGATIVE):
        assert tok.decode(tok(s).input_ids) == s
    assert len(tok("Generate an image: a red cat").input_ids) < len("Generate an image: a red cat") / 2  # merges learned
    # same ids as the in-memory tokenizer and as the raw byte-level BPE it was built from
    from tokenizers import Tokenizer

    raw = Tokenizer.from_str(dt.tokenizer_json())
    for s in (text, "café 一只红色的猫 🐱 Replace the cat with a dog.", dt.EDIT_NEGATIVE):
        assert tok(s).input_ids == tiny.tokenizer(s).input_ids == raw.encode(s).ids
    batch = tok(["Generate an image: a red cat", "Generate an image: "], padding=True, padding_side="left",
                return_tensors="pt")
    short = tok("Generate an image: ").input_ids
    assert batch.input_ids.shape[0] == 2 and batch.input_ids[1, -len(short):].tolist() == short
    n_pad = batch.input_ids.shape[1] - len(short)
    assert n_pad > 0 and batch.input_ids[1, :n_pad].eq(tok.pad_token_id).all()
    assert batch.attention_mask[1].tolist() == [0] * n_pad + [1] * len(short) and batch.attention_mask[0].all()


@pytest.mark.parametrize("where", ["qwen", "diffusers"])
def test_vlm_folder_loads_with_from_pretrained(tiny_layouts, tiny, where):
    from transformers import Qwen2_5_VLForConditionalGeneration

    folder = tiny_layouts[where] / ("vlm" if where == "diffusers" else "")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
    want = tiny.vlm_merged_state if where == "diffusers" else dt.legacy_vlm_state(tiny.vlm_base)
    got = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert {dt.legacy_vlm_key(k) for k in got} == set(want)
    for k, v in got.items():
        assert torch.equal(v, want[dt.legacy_vlm_key(k)]), k
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
    assert model.dtype == torch.float32
    text = model.model.language_model
    assert len(text.layers) == 36 and text.config.hidden_size == 64


def test_vlm_hidden_states_are_finite_and_lora_sensitive(tiny):
    """36 layers of loud weights stay finite, and the merged LoRA moves the SCB's layers measurably."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    merged = Qwen2_5_VLForConditionalGeneration(tiny.vlm_base.config).eval()
    merged.load_state_dict({k: tiny.vlm_merged_state[dt.legacy_vlm_key(k)] if k != "lm_head.weight" else
                            tiny.vlm_merged_state["model.embed_tokens.weight"]
                            for k in merged.state_dict()})
    ids = tiny.tokenizer(["<|im_start|>user\nGenerate an image: a red cat<|im_end|>\n"], return_tensors="pt").input_ids
    with torch.no_grad():
        hs_base = tiny.vlm_base.model.language_model(input_ids=ids, output_hidden_states=True).hidden_states
        hs_merged = merged.model.language_model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(hs_base) == 37
    for i in (35, 29, 23, 17, 11, 5):
        assert torch.isfinite(hs_base[i]).all() and hs_base[i].abs().max() < 1e3
        rel = (hs_merged[i] - hs_base[i]).norm() / hs_base[i].norm()
        assert rel > 0.05, (i, rel)
    assert (hs_base[35] - hs_base[29]).norm() / hs_base[35].norm() > 0.05  # layers differ


def test_visual_tower_runs(tiny):
    visual = tiny.vlm_base.model.visual
    pv = torch.randn(64, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = visual(pv, grid_thw=torch.tensor([[1, 8, 8]]))
    out = getattr(out, "pooler_output", out)  # 5.x returns a ModelOutput
    assert out.shape == (16, 64) and torch.isfinite(out).all() and out.std() > 0.1


def test_dit_vae_and_scheduler_load_and_are_loud(tiny_layouts, tiny):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    root = tiny_layouts["diffusers"]
    dit = SD3Transformer2DModel.from_pretrained(root / "transformer").eval()
    vae = AutoencoderKL.from_pretrained(root / "vae").eval()
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler")
    assert sched.config.shift == 3.0 and not sched.config.use_dynamic_shifting
    assert vae.config.scaling_factor == 1.5305 and vae.config.shift_factor == 0.0609
    assert dit.config.dual_attention_layers == (0,) or list(dit.config.dual_attention_layers) == [0]
    g = torch.Generator().manual_seed(1)
    x, ctx, pooled = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g), torch.randn(1, 32, generator=g)
    t = torch.tensor([500.0])

    def run(model, c=ctx, p=pooled):
        with torch.no_grad():
            return model(hidden_states=x, encoder_hidden_states=c, pooled_projections=p, timestep=t).sample

    v = run(dit)  # (permuting context tokens is a no-op by design: no positions on context)
    assert v.shape == x.shape and torch.isfinite(v).all() and v.std() > 0.1
    assert all(torch.equal(w, tiny.dit.state_dict()[k]) for k, w in dit.state_dict().items())
    assert (v - run(tiny.dit)).abs().max() <= 1e-5  # same weights; fp32 GEMMs may round by memory alignment
    for other in (run(tiny.dit_base), run(dit, c=ctx[:, :4]), run(dit, p=pooled * 0.5)):
        assert (other - v).abs().mean() > 1e-3 * v.abs().mean()
    with torch.no_grad():
        img = vae.decode(x).sample
        lat = vae.encode(img.clamp(-1, 1)).latent_dist.mean
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all() and img.std() > 0.01
    assert lat.shape == (1, 16, 8, 8) and torch.isfinite(lat).all()


def test_scb_state_shapes(tiny):
    assert tiny.scb_heads == 32 and 64 % tiny.scb_heads == 0  # the release's head count
    assert len(tiny.scb_state) == 103
    assert all(torch.isfinite(v).all() and v.std() > 0 for v in tiny.scb_state.values() if v.numel() > 1)


def _digest(state):
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_builds_are_deterministic_and_seeded(tiny, tmp_path):
    again = dt.build_tiny_components(0)
    for name in ("vlm_merged_state", "scb_state", "lora"):
        assert _digest(getattr(again, name)) == _digest(getattr(tiny, name)), name
    for name in ("vlm_base", "dit", "dit_base", "vae"):
        assert _digest(getattr(again, name).state_dict()) == _digest(getattr(tiny, name).state_dict()), name
    other = dt.build_tiny_components(1)
    assert _digest(other.dit.state_dict()) != _digest(tiny.dit.state_dict())
    assert _digest(other.scb_state) != _digest(tiny.scb_state)
    a = dt.write_native_model_pt(tmp_path / "a" / "model.pt", tiny, "new")
    b = dt.write_native_model_pt(tmp_path / "b" / "model.pt", again, "new")
    assert a.read_bytes() == b.read_bytes()
    ra, rb = dt.write_diffusers_release(tmp_path / "ra", tiny), dt.write_diffusers_release(tmp_path / "rb", again)
    files = sorted(p.relative_to(ra) for p in ra.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(rb) for p in rb.rglob("*") if p.is_file())
    for f in files:
        assert (ra / f).read_bytes() == (rb / f).read_bytes(), f


@pytest.mark.parametrize("state", ["default dtype bfloat16", "default dtype float64", "global RNG reseeded",
                                   "1 thread", "3 threads"])
def test_build_ignores_process_wide_torch_state(tiny, state):
    """The flaky digest: the builders read the process-wide default dtype (which from_pretrained sets and
    restores only on success). Any such state must neither change the weights nor be changed by a build."""
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    torch.manual_seed(12345)
    if state.startswith("default dtype"):
        torch.set_default_dtype(getattr(torch, state.split()[-1]))
    elif state.endswith("threads") or state.endswith("thread"):
        torch.set_num_threads(int(state.split()[0]))
    try:
        before = torch.random.get_rng_state()
        dit, vae, vlm = dt.build_dit(0), dt.build_vae(0), dt.build_vlm(0)
        assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is not consumed
        assert torch.get_default_dtype() == (getattr(torch, state.split()[-1]) if state.startswith("default")
                                             else torch.float32)  # and the default dtype is left as found
    finally:
        torch.set_default_dtype(torch.float32)
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
    for got, want in ((dit, tiny.dit), (vae, tiny.vae), (vlm, tiny.vlm_base)):
        assert all(p.dtype == torch.float32 for p in got.parameters())
        assert _digest(got.state_dict()) == _digest(want.state_dict())


def test_whole_build_is_fast(tmp_path):
    t0 = time.perf_counter()
    dt.build_all_layouts(tmp_path, dt.build_tiny_components(3))
    assert time.perf_counter() - t0 < 30
