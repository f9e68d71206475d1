"""Core nodes reach the DeepGen MODEL as they reach core's own SD3 models (issue 19): LoRAs in every common
format, skip-layer guidance, SD3 ControlNets, attention overrides, ModelSave + reload, and a clear refusal of
FluxKontextMultiReferenceLatentMethod. Each test fails on a DiT that drops transformer_options / control or
whose parameter names core does not know (the diffusers-module MODEL before issue 19).

The tiny release's DiT has SD3.5-Medium's structure at toy size (3 blocks of 3 x 64 channels, block 0 with the
extra image self-attention, block 2 context-pre-only), so every kind of block is covered.
"""
from __future__ import annotations

import copy
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

RELEASE = "DeepGen-1.0-diffusers"
MERGED = "h19/DeepGen-lora-merged"
SEED, STEPS = 7, 2
RANK, ALPHA = 4, 2.0  # LoRA scale alpha / rank = 0.5
# MMDiT weights the test LoRA changes: fused q/k/v of the image, context and extra self-attention, projections,
# MLPs, modulations (incl. the two whose halves diffusers stores swapped), embedders and the output layer
TARGETS = ["joint_blocks.0.x_block.attn.qkv", "joint_blocks.0.x_block.attn2.qkv", "joint_blocks.1.context_block.attn.qkv",
           "joint_blocks.0.context_block.attn.proj", "joint_blocks.2.x_block.attn.proj", "joint_blocks.1.x_block.mlp.fc1",
           "joint_blocks.1.context_block.mlp.fc2", "joint_blocks.1.x_block.adaLN_modulation.1",
           "joint_blocks.2.context_block.adaLN_modulation.1", "final_layer.adaLN_modulation.1", "final_layer.linear",
           "context_embedder", "y_embedder.mlp.0", "t_embedder.mlp.2"]
FORMATS = ("diffusers_peft", "kohya", "comfy_mmdit", "pack_legacy")


def pack_module(comfy, name: str):
    return sys.modules[f"{comfy.pack.__name__}.{name}"]


@pytest.fixture(scope="module")
def node(comfy_inprocess, release):
    mappings = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS

    def run(node_id, method=None, **kw):
        cls = mappings[node_id]
        if hasattr(cls, "execute") and method is None:
            return cls.execute(**kw)
        return getattr(cls(), method or cls.FUNCTION)(**kw)
    return run


@pytest.fixture(scope="module")
def dit(node):
    return node("DeepGenDiTLoader", dit_name=RELEASE, dit_base="none", weight_dtype="fp32")[0]


def inputs(seed=0, refs=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 8, 8, generator=g)
    conds = {"c_crossattn": torch.randn(1, 5, 32, generator=g), "y": torch.randn(1, 32, generator=g)}
    if refs:
        conds["ref_latents"] = [torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 4, 6, generator=g)]
    return x, torch.tensor([0.6]), conds


def forward(patcher, seed=0, refs=True, transformer_options=None):
    """One DiT call through BaseModel.apply_model with the patcher's weight patches applied."""
    x, sigma, conds = inputs(seed, refs)
    options = transformer_options if transformer_options is not None else \
        patcher.model_options.get("transformer_options", {})
    patcher.patch_model(device_to=torch.device("cpu"))
    try:
        with torch.no_grad():
            return patcher.model.apply_model(x, sigma, transformer_options=options, **conds)
    finally:
        patcher.unpatch_model(device_to=torch.device("cpu"))


# ------------------------------------------------------------------ LoRA

def test_weights_are_converted_as_core_converts_diffusers_sd3(comfy_inprocess, tiny):
    """deepgen_model.mmdit_format gives the names and values core's own diffusers-SD3 loader gives (so core's
    LoRA key maps address the right weights), and core reads the same MMDiT config off them."""
    import comfy.model_detection

    from deepgen_model.mmdit_format import mmdit_config, to_mmdit

    def state():  # copies: core's converter swaps the halves of some tensors in place
        return {k: v.clone() for k, v in tiny.dit.state_dict().items()}

    ours, core = to_mmdit(state(), tiny.dit.config.num_layers), comfy.model_detection.convert_diffusers_mmdit(state(), "")
    assert ours.keys() == core.keys() and all(torch.equal(ours[k], core[k]) for k in ours)
    detected = comfy.model_detection.detect_unet_config(core, "")
    assert {**detected, "num_blocks": tiny.dit.config.num_layers} == mmdit_config(dict(tiny.dit.config))


@pytest.fixture(scope="module")
def deltas(tiny):
    """MMDiT name -> (up, down) of rank RANK; the weight change of the LoRA is ALPHA / RANK * up @ down."""
    from deepgen_model.mmdit_format import to_mmdit

    state = to_mmdit(dict(tiny.dit.state_dict()), tiny.dit.config.num_layers)
    g = torch.Generator().manual_seed(19)
    out = {}
    for name in TARGETS:
        rows, cols = state[f"{name}.weight"].shape
        out[name] = (torch.randn(rows, RANK, generator=g) * 0.2, torch.randn(RANK, cols, generator=g) * 0.2)
    return out


def _diffusers_parts(name: str, num_layers: int):
    """[(diffusers name, third of a fused q/k/v or None, halves swapped)] that make up one MMDiT weight."""
    from deepgen_model import mmdit_format

    mm = f"{name}.weight"
    fused = mmdit_format._fused_map(num_layers)
    if mm in fused:
        return [(p[:-len(".weight")], i, False) for i, p in enumerate(fused[mm])]
    return [(d[:-len(".weight")], None, swap) for d, (m, swap) in mmdit_format._name_map(num_layers).items() if m == mm]


def lora_file(fmt: str, deltas: dict, num_layers: int) -> dict:
    """The same weight changes written as each LoRA format people have."""
    scale = ALPHA / RANK
    out = {}
    for name, (up, down) in deltas.items():
        if fmt in ("kohya", "comfy_mmdit"):
            key = f"lora_unet_{name.replace('.', '_')}" if fmt == "kohya" else f"diffusion_model.{name}"
            out.update({f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down, f"{key}.alpha": torch.tensor(ALPHA)})
            continue
        for dname, third, swap in _diffusers_parts(name, num_layers):
            b = up if third is None else up.chunk(3, dim=0)[third]
            if swap:
                b = torch.cat(b.chunk(2, dim=0)[::-1], dim=0)
            if fmt == "diffusers_peft":  # PEFT files carry no alpha: the scale is in B
                out.update({f"transformer.{dname}.lora_A.weight": down, f"transformer.{dname}.lora_B.weight": b * scale})
            else:  # the pack's own names before issue 19 (core LoraSave on the old MODEL wrote these)
                key = f"diffusion_model.dit.{dname}"
                out.update({f"{key}.lora_up.weight": b, f"{key}.lora_down.weight": down,
                            f"{key}.alpha": torch.tensor(ALPHA)})
    return {k: v.clone().contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def loras(comfy_models, deltas, tiny):
    folder = comfy_models / "loras"
    folder.mkdir(exist_ok=True)
    for fmt in FORMATS:
        save_file(lora_file(fmt, deltas, tiny.dit.config.num_layers), str(folder / f"h19_{fmt}.safetensors"))
    return {fmt: f"h19_{fmt}.safetensors" for fmt in FORMATS}


@pytest.fixture(scope="module")
def merged(comfy_models, deltas, tiny):
    """A release whose DiT has the LoRA merged by hand: W + alpha / rank * up @ down, in diffusers names."""
    from deepgen_model import tiny as deepgen_tiny
    from deepgen_model.mmdit_format import from_mmdit, to_mmdit

    num_layers = tiny.dit.config.num_layers
    state = to_mmdit({k: v.clone() for k, v in tiny.dit.state_dict().items()}, num_layers)
    for name, (up, down) in deltas.items():
        state[f"{name}.weight"] += ALPHA / RANK * up @ down
    dit = copy.deepcopy(tiny.dit)
    dit.load_state_dict(from_mmdit(state, "merged")[0])
    comps = copy.copy(tiny)
    comps.dit = dit
    root = comfy_models / "deepgen" / MERGED
    if not root.exists():
        deepgen_tiny.write_diffusers_release(root, comps)
    return MERGED


class _NotLoaded(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        text = record.getMessage()
        if "lora key not loaded" in text or "NOT LOADED" in text:
            self.lines.append(text)


def load_lora(node, model, name, strength, model_only=True):
    handler = _NotLoaded()
    logging.getLogger().addHandler(handler)
    try:
        if model_only:
            out = node("LoraLoaderModelOnly", model=model, lora_name=name, strength_model=strength)[0]
        else:
            out = node("LoraLoader", model=model, clip=None, lora_name=name, strength_model=strength,
                       strength_clip=1.0)[0]
    finally:
        logging.getLogger().removeHandler(handler)
    return out, handler.lines


@pytest.mark.parametrize("fmt", FORMATS)
def test_lora_formats_load_fully_and_equal_a_hand_merged_release(node, dit, loras, merged, fmt):
    patched, not_loaded = load_lora(node, dit, loras[fmt], 1.0)
    assert not_loaded == [], not_loaded
    assert len(patched.patches) == len(TARGETS)  # every MMDiT weight the LoRA changes got its patch
    want = forward(node("DeepGenDiTLoader", dit_name=merged, dit_base="none", weight_dtype="fp32")[0])
    got = forward(patched)
    assert (got - want).abs().max() <= 1e-5, (got - want).abs().max()
    assert (got - forward(dit)).abs().max() > 1e-3  # the LoRA does change the output

    zero, not_loaded = load_lora(node, dit, loras[fmt], 0.0)
    assert not_loaded == [] and torch.equal(forward(zero), forward(dit))


def test_core_lora_loader_with_no_clip(node, dit, loras, merged):
    patched, not_loaded = load_lora(node, dit, loras["kohya"], 1.0, model_only=False)
    assert not_loaded == []
    want = forward(node("DeepGenDiTLoader", dit_name=merged, dit_base="none", weight_dtype="fp32")[0])
    assert (forward(patched) - want).abs().max() <= 1e-5


def test_half_strength_lora_is_half_the_change(node, dit, loras):
    base, full = forward(dit, refs=False), forward(load_lora(node, dit, loras["diffusers_peft"], 1.0)[0], refs=False)
    half = forward(load_lora(node, dit, loras["diffusers_peft"], 0.5)[0], refs=False)
    assert not torch.allclose(half, base) and not torch.allclose(half, full)


# ------------------------------------------------------------------ skip-layer guidance

def _bypassed_engine(tiny, block: int):
    """The engine's DiT (diffusers modules) with one block replaced by hand with one that passes its inputs on."""
    from deepgen_model.transformer import DeepGenTransformer

    class PassOn(torch.nn.Module):
        def forward(self, hidden_states, encoder_hidden_states, **kwargs):
            return encoder_hidden_states, hidden_states

    engine = DeepGenTransformer(copy.deepcopy(tiny.dit))
    engine.dit.transformer_blocks[block] = PassOn()
    return engine


@pytest.mark.parametrize("block", [0, 1, 2])  # MMDiT-X block with attn2, a plain block, the context-pre-only one
def test_skipped_block_equals_the_block_bypassed_by_hand(comfy_inprocess, dit, tiny, block):
    """Core's contract for patches_replace["dit"][("double_block", i)] (what every SLG node sets): the patch gets
    {"img", "txt", "vec"} with "img" = target + reference tokens and returns them; skipping block i equals
    running the DiT with block i bypassed (the last, pre-only block keeps its context)."""
    import comfy.model_patcher

    seen = []

    def skip(args, extra):
        seen.append(args["img"].shape[1])
        return {"img": args["img"], "txt": args["txt"]}

    options = comfy.model_patcher.set_model_options_patch_replace({"transformer_options": {}}, skip, "dit",
                                                                "double_block", block)
    got = forward(dit, transformer_options=options["transformer_options"])
    x, sigma, conds = inputs()
    refs = [[r[0] for r in conds["ref_latents"]]]
    with torch.no_grad():
        v = _bypassed_engine(tiny, block)(x, sigma * 1000, conds["c_crossattn"], conds["y"], refs)
    assert seen == [16 + 16 + 6]  # one call, target + both references' tokens
    assert (got - (x - sigma * v)).abs().max() <= 1e-5
    assert (got - forward(dit)).abs().max() > 1e-3


def test_a_skipped_block_the_dit_lacks_is_named_once_in_the_log(comfy_inprocess, dit, caplog):
    """Core never reaches a replaced block beyond the DiT's (SLG with "30" on a 24-block DiT does nothing, for
    core's SD3 too): the DeepGen MODEL says so in the log, once, naming the blocks it has; a block it has is
    not mentioned."""
    import comfy.model_patcher

    def skip(args, extra):
        return {"img": args["img"], "txt": args["txt"]}

    def patched(*blocks):
        options = {"transformer_options": {}}
        for b in blocks:
            options = comfy.model_patcher.set_model_options_patch_replace(options, skip, "dit", "double_block", b)
        return options["transformer_options"]

    said = lambda: [r.getMessage() for r in caplog.records if "names DiT block" in r.getMessage()]  # noqa: E731
    with caplog.at_level(logging.WARNING):
        got = forward(dit, transformer_options=patched(41, 43))
        forward(dit, transformer_options=patched(41, 43))
        assert said() == ["DeepGen: a block patch (skip-layer guidance?) names DiT block(s) 41, 43, but this DiT "
                          "has 3 blocks (0-2): nothing happens for those; pick block numbers below 3."]
        forward(dit, transformer_options=patched(1))
        assert len(said()) == 1
    assert torch.equal(got, forward(dit))  # nothing happened, as the message says


# ------------------------------------------------------------------ attention overrides

def test_attention_goes_through_comfy_attention_overrides(dit):
    """transformer_options["optimized_attention_override"] (sage/flash packs, core's attention options) sees
    every attention of the DiT: 3 joint attentions + block 0's image self-attention per call."""
    calls = []

    def override(func, *args, **kwargs):
        calls.append(args[0].shape)
        return func(*args, **kwargs)

    model = dit.clone()
    model.model_options["transformer_options"]["optimized_attention_override"] = override
    got = forward(model)
    assert len(calls) == 4, calls
    assert torch.equal(got, forward(dit))


# ------------------------------------------------------------------ whole graphs: SLG, ControlNet, Kontext method

def graph(seed=SEED, guidance=None, edit=False, control=None, kontext=None, model=None) -> dict:
    """Checkpoint loader -> encode -> [guidance/control nodes] -> DeepGenSampler -> decode, 64x64, STEPS steps."""
    g = {"1": {"class_type": "DeepGenCheckpointLoader",
               "inputs": {"ckpt_name": RELEASE, "vlm_base": "none", "dit_base": "none", "weight_dtype": "fp32",
                          "quantization": "none", "attention": "sdpa"}}}
    if edit:
        g["i"] = {"class_type": "LoadImage", "inputs": {"image": "h19_ref.png"}}
        g["2"] = {"class_type": "DeepGenEditEncode",
                  "inputs": {"vlm": ["1", 1], "scb": ["1", 2], "vae": ["1", 3], "prompt": "make it blue",
                             "negative_prompt": "", "image1": ["i", 0], "max_side": 64, "width": 64, "height": 64}}
        latent = ["2", 2]
    else:
        g["2"] = {"class_type": "DeepGenTextEncode",
                  "inputs": {"vlm": ["1", 1], "scb": ["1", 2], "prompt": "a lighthouse", "negative_prompt": "fog"}}
        g["3"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
        latent = ["3", 0]
    model, positive, negative = model or ["1", 0], ["2", 0], ["2", 1]
    if guidance:
        g["g"] = {"class_type": guidance[0], "inputs": {"model": model, **guidance[1]}}
        model = ["g", 0]
    if control:
        g["c"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": control[0]}}
        g["h"] = {"class_type": "LoadImage", "inputs": {"image": "h19_hint.png"}}
        g["a"] = {"class_type": "ControlNetApplySD3",
                  "inputs": {"positive": positive, "negative": negative, "control_net": ["c", 0], "vae": ["1", 3],
                             "image": ["h", 0], "strength": control[1], "start_percent": 0.0, "end_percent": 1.0}}
        positive, negative = ["a", 0], ["a", 1]
    if kontext:
        g["k"] = {"class_type": "FluxKontextMultiReferenceLatentMethod",
                  "inputs": {"conditioning": positive, "reference_latents_method": kontext}}
        positive = ["k", 0]
    g["5"] = {"class_type": "DeepGenSampler", "inputs": {"model": model, "positive": positive, "negative": negative,
                                                         "latent": latent, "seed": seed, "steps": STEPS, "cfg": 4.0}}
    g["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 3]}}
    g["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    return g


@pytest.fixture(scope="module")
def images(comfy_base, release):
    from PIL import Image

    g = np.random.default_rng(19)
    for name in ("h19_ref.png", "h19_hint.png"):
        Image.fromarray(g.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(comfy_base / "input" / name)


def picture(comfy, prompt) -> torch.Tensor:
    ok, _, msgs = comfy.run(prompt)
    assert ok, msgs
    return comfy.node_output("6")[0][0]


def failure(comfy, prompt) -> str:
    ok, _, msgs = comfy.run(prompt)
    assert not ok
    (err,) = [d for e, d in msgs if e == "execution_error"]
    return err["exception_message"]


SLG_NODES = {
    "SkipLayerGuidanceSD3": {"layers": "1", "scale": 3.0, "start_percent": 0.0, "end_percent": 1.0},
    "SkipLayerGuidanceDiT": {"double_layers": "1", "single_layers": "", "scale": 3.0, "start_percent": 0.0,
                             "end_percent": 1.0, "rescaling_scale": 0.0},
    "SkipLayerGuidanceDiTSimple": {"double_layers": "1", "single_layers": "", "start_percent": 0.0,
                                   "end_percent": 1.0},
}


@pytest.mark.parametrize("slg", list(SLG_NODES))
def test_skip_layer_guidance_nodes_change_the_picture(comfy_inprocess, images, slg):
    base = picture(comfy_inprocess, graph(edit=True))
    guided = picture(comfy_inprocess, graph(edit=True, guidance=(slg, SLG_NODES[slg])))
    assert (guided - base).abs().max() > 1e-3  # before issue 19: identical (the patch never reached a block)
    if "scale" in SLG_NODES[slg]:
        off = picture(comfy_inprocess, graph(edit=True, guidance=(slg, {**SLG_NODES[slg], "scale": 0.0})))
        assert torch.equal(off, base)


def _tiny_controlnet(folder, heads: int, name: str) -> str:
    """A random SD3 ControlNet (diffusers layout, as InstantX/diffusers publish them) for a DiT of `heads` x 64."""
    from diffusers.models.controlnets.controlnet_sd3 import SD3ControlNetModel

    torch.manual_seed(heads)
    cn = SD3ControlNetModel(sample_size=32, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=64,
                            num_attention_heads=heads, joint_attention_dim=32, caption_projection_dim=64 * heads,
                            pooled_projection_dim=32, out_channels=16, pos_embed_max_size=64)
    with torch.no_grad():
        for p in cn.parameters():  # diffusers zero-initialises the output blocks: make the residuals non-zero
            p.normal_(0, 0.05)
    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(folder / name))
    return name


@pytest.fixture(scope="module")
def controlnets(comfy_models):
    return {"fits": _tiny_controlnet(comfy_models / "controlnet", 3, "h19_sd3_controlnet.safetensors"),
            "other": _tiny_controlnet(comfy_models / "controlnet", 2, "h19_other_width_controlnet.safetensors")}


@pytest.mark.parametrize("edit", [False, True], ids=["t2i", "edit"])
def test_sd3_controlnet_is_applied(comfy_inprocess, images, controlnets, edit):
    base = picture(comfy_inprocess, graph(edit=edit))
    controlled = picture(comfy_inprocess, graph(edit=edit, control=(controlnets["fits"], 1.0)))
    assert (controlled - base).abs().max() > 1e-3  # before issue 19: identical (control was dropped)
    assert torch.equal(picture(comfy_inprocess, graph(edit=edit, control=(controlnets["fits"], 0.0))), base)


def test_controlnet_for_another_width_is_refused_naming_why(comfy_inprocess, images, controlnets):
    msg = failure(comfy_inprocess, graph(seed=SEED + 1, control=(controlnets["other"], 1.0)))
    assert "ControlNet" in msg and "width 192" in msg and "SD3.5-Medium" in msg, msg


def test_flux_kontext_reference_method_is_refused_naming_what_deepgen_does(comfy_inprocess, images):
    msg = failure(comfy_inprocess, graph(edit=True, kontext="index"))
    assert "FluxKontextMultiReferenceLatentMethod" in msg and "'index'" in msg
    assert "target's own positions" in msg and "Remove that node" in msg


# ------------------------------------------------------------------ ModelSave -> reload

def applied_weights(patcher) -> dict:
    """The MMDiT's weights with the patcher's LoRA patches applied."""
    patcher.patch_model(device_to=torch.device("cpu"))
    try:
        return {k: v.clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
    finally:
        patcher.unpatch_model(device_to=torch.device("cpu"))


def test_model_save_reloads_through_the_dit_loader_and_core_unet_loader(comfy_inprocess, node, dit, loras):
    """A LoRA-merged MODEL saved with core ModelSave loads back through DeepGen DiT Loader (identical, with
    references) and core's Load Diffusion Model (identical text-to-image: core's SD3 model; an edit with
    references through it is refused by DeepGenSampler rather than silently dropped)."""
    patched = load_lora(node, dit, loras["kohya"], 1.0)[0]
    saver = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["ModelSave"]
    saver().save(model=patched, filename_prefix="diffusion_models/h19_saved")
    saved = sorted((comfy_inprocess.output_dir / "diffusion_models").glob("h19_saved_*.safetensors"))[-1]
    target = Path(comfy_inprocess.folder_paths.get_folder_paths("diffusion_models")[-1])
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(saved, target / saved.name)

    options = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["DeepGenDiTLoader"].INPUT_TYPES()["required"]
    assert saved.name in options["dit_name"][1]["options"]
    reloaded = node("DeepGenDiTLoader", dit_name=saved.name, dit_base="none", weight_dtype="fp32")[0]
    merged = applied_weights(patched)
    assert all(torch.equal(v, merged[k]) for k, v in reloaded.model.diffusion_model.state_dict().items())
    assert (forward(reloaded) - forward(patched)).abs().max() <= 1e-5  # same weights; fp32 kernel noise

    core = node("UNETLoader", unet_name=saved.name, weight_dtype="default")[0]
    assert all(torch.equal(v, merged[k]) for k, v in core.model.diffusion_model.state_dict().items())
    assert (forward(core, refs=False) - forward(patched, refs=False)).abs().max() <= 1e-5
    sampling = pack_module(comfy_inprocess, "nodes.sampling")
    errors = pack_module(comfy_inprocess, "deepgen_model.errors")
    x, _, conds = inputs()
    cond = [[conds["c_crossattn"], {"pooled_output": conds["y"], "reference_latents": conds["ref_latents"][:1]}]]
    with pytest.raises(errors.DeepGenInputError, match="ignores reference images"):
        sampling.deepgen_sample(core, cond, cond, {"samples": torch.zeros_like(x)}, 0, 1, 4.0)


# ------------------------------------------------------------------ the other core model patches still do their job

def _defaults(comfy, node_id: str, **given) -> dict:
    """A node's required inputs at their defaults (read from this ComfyUI's own schema), overridden by `given`."""
    spec = comfy.nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()["required"]
    out = {}
    for name, (kind, *opts) in spec.items():
        if name in given:
            out[name] = given[name]
        elif isinstance(kind, list):
            out[name] = (opts[0] if opts else {}).get("default", kind[0])
        elif opts and "default" in opts[0]:
            out[name] = opts[0]["default"]
    return out


# node -> (extra inputs, whether it changes a 2-step picture)
MODEL_PATCHES = {
    "ModelSamplingSD3": ({"shift": 6.0}, True),
    "CFGZeroStar": ({}, True),
    "CFGNorm": ({}, True),
    "APG": ({}, True),
    "RescaleCFG": ({}, True),
    "TCFG": ({}, True),
    "FreSca": ({"scale_low": 0.5}, True),  # the default cutoff spans all of a tiny latent's spectrum
    "EasyCache": ({}, False),  # skips steps only once outputs settle: a 2-step run computes every step
    "LazyCache": ({}, False),
    "DifferentialDiffusion": ({}, False),  # acts only with a noise mask
}


@pytest.mark.parametrize("node_id", list(MODEL_PATCHES))
def test_core_model_patches_run_on_the_deepgen_model(comfy_inprocess, images, node_id):
    if node_id not in comfy_inprocess.nodes.NODE_CLASS_MAPPINGS:
        pytest.skip(f"{node_id} is not in this ComfyUI")
    extra, changes = MODEL_PATCHES[node_id]
    base = picture(comfy_inprocess, graph(edit=True))
    inputs = _defaults(comfy_inprocess, node_id, model=["1", 0], **extra)
    patched = picture(comfy_inprocess, graph(edit=True, guidance=(node_id, {k: v for k, v in inputs.items()
                                                                           if k != "model"})))
    assert torch.isfinite(patched).all() and patched.std() > 0.01
    if changes:
        assert (patched - base).abs().max() > 1e-3
    else:
        assert (patched - base).abs().max() <= 2e-3


def test_model_merge_simple_mixes_deepgen_models(node, dit, loras):
    patched = load_lora(node, dit, loras["kohya"], 1.0)[0]
    (merged,) = node("ModelMergeSimple", model1=dit, model2=patched, ratio=0.0)  # ratio 0: all of model2
    assert (forward(merged) - forward(patched)).abs().max() <= 1e-5
    assert (forward(merged) - forward(dit)).abs().max() > 1e-3
