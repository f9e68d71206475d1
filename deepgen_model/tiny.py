"""A tiny random-weight DeepGen 1.0 look-alike in every release layout: for the demo, benchmarks and tests;
its images are noise.

Shapes follow docs/inference.md#components at toy sizes, key names and folder layouts follow
docs/inference.md#checkpoints exactly, so loaders and the engine are exercised on the real naming
rules in a few seconds on a CPU. Weights are random
but deliberately "loud" (no zero-initialised heads, norms away from 1) so that swapping any component
changes outputs. Nothing here imports the rest of `deepgen_model` (tests/unit/test_fixtures.py checks
it): the tests use these models and files as an independent reference for the engine's loaders.
"""
from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

# ---------------------------------------------------------------------------------------------------
# Tiny configs (data)

# Qwen2.5-VL special tokens, in the release's order, appended after the BPE vocabulary (docs/inference.md#vlm).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
TINY_BPE_VOCAB = 512  # byte alphabet (256) + 256 merges; specials get ids 512..525
TINY_TOKEN_IDS = {t: TINY_BPE_VOCAB + i for i, t in enumerate(SPECIAL_TOKENS)}
TINY_VOCAB_SIZE = TINY_BPE_VOCAB + len(SPECIAL_TOKENS)

TINY_TEXT = dict(hidden_size=64, num_hidden_layers=36, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, rms_norm_eps=1e-6, rope_theta=1000000.0, mrope_section=[2, 3, 3])
TINY_VISION = dict(depth=2, hidden_act="silu", hidden_size=32, intermediate_size=64, num_heads=2, in_chans=3,
                   out_hidden_size=64, patch_size=14, spatial_merge_size=2, spatial_patch_size=14,
                   window_size=112, fullatt_block_indexes=[1], tokens_per_second=2, temporal_patch_size=2)

# Hub (transformers 4.4x "flat") layout, like Qwen/Qwen2.5-VL-3B-Instruct's config.json; 4.5x and 5.x load it.
TINY_VLM_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": TINY_TOKEN_IDS["<|endoftext|>"],
    "eos_token_id": TINY_TOKEN_IDS["<|im_end|>"],
    "vision_start_token_id": TINY_TOKEN_IDS["<|vision_start|>"],
    "vision_end_token_id": TINY_TOKEN_IDS["<|vision_end|>"],
    "vision_token_id": TINY_TOKEN_IDS["<|vision_pad|>"],
    "image_token_id": TINY_TOKEN_IDS["<|image_pad|>"],
    "video_token_id": TINY_TOKEN_IDS["<|video_pad|>"],
    "hidden_act": "silu",
    "hidden_size": TINY_TEXT["hidden_size"],
    "initializer_range": 0.02,
    "intermediate_size": TINY_TEXT["intermediate_size"],
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": TINY_TEXT["num_attention_heads"],
    "num_hidden_layers": TINY_TEXT["num_hidden_layers"],
    "num_key_value_heads": TINY_TEXT["num_key_value_heads"],
    "rms_norm_eps": TINY_TEXT["rms_norm_eps"],
    "rope_theta": TINY_TEXT["rope_theta"],
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": TINY_VISION,
    "rope_scaling": {"type": "mrope", "mrope_section": TINY_TEXT["mrope_section"]},
    "vocab_size": TINY_VOCAB_SIZE,
}
TINY_GENERATION_CONFIG = {"bos_token_id": TINY_TOKEN_IDS["<|endoftext|>"], "pad_token_id": TINY_TOKEN_IDS["<|endoftext|>"],
                          "do_sample": False, "eos_token_id": [TINY_TOKEN_IDS["<|im_end|>"], TINY_TOKEN_IDS["<|endoftext|>"]],
                          "transformers_version": "4.49.0"}

TINY_LORA_RANK = 4
TINY_LORA_SCALE = 2.0  # alpha / r, as the release (128 / 64)
LM_LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
VIT_LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# 64-channel heads and as many heads as blocks, as every SD3-family MMDiT has (the release: 24 x 64, 24 blocks):
# ComfyUI runs the DiT on its own MMDiT, which derives the width and block count from the head count.
TINY_DIT = dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=3, attention_head_dim=64,
                num_attention_heads=3, joint_attention_dim=32, caption_projection_dim=192, pooled_projection_dim=32,
                pos_embed_max_size=64, dual_attention_layers=(0,), qk_norm="rms_norm")

# connector/config.json of the release, at toy size (docs/inference.md#scb-connector). The head count is the release's 32
# (head_dim 2): a native model.pt carries no connector config, so loaders fall back to 32 heads.
TINY_CONNECTOR = {"hidden_size": 64, "intermediate_size": 94, "num_hidden_layers": 6, "num_attention_heads": 32,
                  "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "attention_dropout": 0.0}
TINY_NUM_QUERIES = 128
TINY_NUM_STACKED = 6  # hidden states 35, 29, 23, 17, 11, 5

# The SD3 VAE's architecture at the narrowest width ComfyUI builds natively: its VAE blocks hard-code
# GroupNorm(32, C), so every width is a multiple of 32 and norm_num_groups is 32, as in the release.
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=16,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=32,
                scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)

TINY_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False, "base_shift": 0.5,
                  "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}

# docs/inference.md#diffusers-layout (as seen on the release's refs/pr/2)
MODEL_INDEX = {"_class_name": ["deepgen_pipeline", "DeepGenPipeline"], "_diffusers_version": "0.35.2",
               "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
               "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
# Illustrative only (xtuner-style template of configs/models/deepgen_scb.py); the engine must not need it.
PROMPT_TEMPLATE = {"IMG_START_TOKEN": "<|vision_start|>", "IMG_END_TOKEN": "<|vision_end|>",
                   "IMG_CONTEXT_TOKEN": "<|image_pad|>", "IMG_START_TOKEN_FOR_GENERATION": False,
                   "SYSTEM": "<|im_start|>system\n{system}<|im_end|>\n",
                   "INSTRUCTION": "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
                   "SUFFIX": "<|im_end|>", "SUFFIX_AS_EOS": True, "SEP": "\n",
                   "STOP_WORDS": ["<|im_end|>", "<|endoftext|>"],
                   "GENERATION": "Generate an image: {input}", "CFG": "Generate an image."}
NATIVE_CONFIG = {"_class_name": "DeepGen-1.0", "_diffusers_version": "0.35.2", "_transformers_version": "4.56.1"}

EDIT_NEGATIVE = ("blurry, low quality, low resolution, distorted, deformed, broken content, missing parts, "
                 "damaged details, artifacts, glitch, noise, pixelated, grainy, compression artifacts, "
                 "bad composition, wrong proportion, incomplete editing, unfinished, unedited areas.")

# ---------------------------------------------------------------------------------------------------
# Tokenizer

_CORPUS = [
    "Generate an image: a red cat sitting on a blue mat.", "Generate an image: a red cat", "Generate an image.",
    "Generate an image: a photo of a dog running on the beach at sunset, highly detailed.",
    "Generate an image: an astronaut riding a horse on the moon, oil painting.",
    "Make the sky purple.", "Replace the cat with a dog.", "Remove the car from the street.",
    "Change the background to a snowy forest.", "Add a hat to the person.", "Turn the photo into a watercolor.",
    "Put the object from the second image into the first image.", "Make it night time with stars.",
    "system user assistant You are a helpful assistant.", "Edit the image: make the sky purple.",
    EDIT_NEGATIVE, "green yellow white black orange pink brown gray small large big tiny old new",
    "café crème brûlée naïve résumé", "一只红色的猫 生成一张图片 蓝天白云", "🐱 🎨 ✨ 🌅", "0123456789 3.5 512x512 1024",
]
_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # Qwen2's pre-tokenizer regex


@functools.lru_cache(maxsize=1)
def tokenizer_json() -> str:
    """tokenizer.json of a byte-level BPE with Qwen2's pipeline (NFC, Qwen regex, byte-level), trained offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=TINY_BPE_VOCAB, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(_CORPUS * 4, trainer)
    if tok.get_vocab_size() != TINY_BPE_VOCAB:
        raise RuntimeError(f"tiny BPE has {tok.get_vocab_size()} tokens, expected {TINY_BPE_VOCAB}: grow the corpus")
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok.to_str()


def tokenizer_files() -> dict[str, str]:
    """Hub-style tokenizer folder (as Qwen2.5-VL-3B-Instruct ships it), loadable by transformers 4.5x and 5.x.

    5.x's own save_pretrained writes a config 4.x cannot read, so every file is written by hand."""
    tj = tokenizer_json()
    model = json.loads(tj)["model"]
    added = {str(TINY_TOKEN_IDS[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": True} for t in SPECIAL_TOKENS}
    config = {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
              "additional_special_tokens": SPECIAL_TOKENS[1:], "bos_token": None, "clean_up_tokenization_spaces": False,
              "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>",
              "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    merges = ["#version: 0.2"] + [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {"tokenizer.json": tj, "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False),
            "vocab.json": json.dumps(model["vocab"], ensure_ascii=False), "merges.txt": "\n".join(merges) + "\n"}


def write_tokenizer(folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in tokenizer_files().items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def load_tokenizer():
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        return AutoTokenizer.from_pretrained(write_tokenizer(d))


# ---------------------------------------------------------------------------------------------------
# Seeded "loud" random weights


def _gen(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + stream)


def _rand(shape, g, std=1.0, mean=0.0) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean


@contextlib.contextmanager
def _fixed_torch_state():
    """Build under fixed process-wide torch state and leave that state as found.

    Module constructors create their tensors in the *default dtype*, which is process-wide and which
    diffusers' (and transformers 4.x's) from_pretrained(torch_dtype=...) sets and restores only when
    loading succeeds: a default dtype left at bf16/fp64 by anything else silently changed the tiny
    weights (the flaky digest test). The constructors' throw-away init also draws from the global RNG,
    which a fixture must not consume on behalf of later tests."""
    dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.set_default_dtype(torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)


def _loud_tensor(name: str, shape, g) -> torch.Tensor:
    if len(shape) == 1:  # norms around 1 with noise, biases small but nonzero
        return _rand(shape, g, 0.1, 1.0) if name.endswith("weight") else _rand(shape, g, 0.05)
    if "embed_tokens" in name:
        return _rand(shape, g, 1.0)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return _rand(shape, g, fan_in ** -0.5)  # keeps activations O(1) through every layer


@torch.no_grad()
def _randomize(module: torch.nn.Module, g: torch.Generator) -> torch.nn.Module:
    """Overwrite every parameter (tied ones once) in sorted-name order: same values in any library version."""
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        p.copy_(_loud_tensor(name, tuple(p.shape), g))
    return module


# ---------------------------------------------------------------------------------------------------
# Components


def build_vlm(seed: int = 0):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with _fixed_torch_state():
        cfg = Qwen2_5_VLConfig.from_dict(json.loads(json.dumps(TINY_VLM_CONFIG)))
        vlm = Qwen2_5_VLForConditionalGeneration(cfg).eval()
        return _randomize(vlm, _gen(seed, 1))


def legacy_vlm_key(key: str) -> str:
    """Runtime (transformers >= 4.52) state-dict key -> legacy on-disk name of the hub/release files."""
    for new, old in (("model.language_model.", "model."), ("model.visual.", "visual.")):
        if key.startswith(new):
            return old + key[len(new):]
    return key


def legacy_vlm_state(vlm) -> dict[str, torch.Tensor]:
    """Hub-layout tensors (fp32 copies): legacy names, tied lm_head dropped (docs/inference.md#key-names)."""
    return {legacy_vlm_key(k): v.detach().float().clone().contiguous()
            for k, v in vlm.state_dict().items() if k != "lm_head.weight"}


def _lora_targets() -> list[tuple[str, str]]:
    """(runtime module name, kind) of every LoRA target (docs/inference.md#vlm), kind in linear/embedding/lm_head."""
    out = [("model.language_model.embed_tokens", "embedding"), ("lm_head", "lm_head")]
    out += [(f"model.language_model.layers.{i}.{t}", "linear")
            for i in range(TINY_TEXT["num_hidden_layers"]) for t in LM_LORA_TARGETS]
    out += [(f"model.visual.blocks.{i}.{t}", "linear") for i in range(TINY_VISION["depth"]) for t in VIT_LORA_TARGETS]
    out += [("model.visual.merger.mlp.0", "linear"), ("model.visual.merger.mlp.2", "linear")]
    return out


def build_lora(vlm, seed: int = 0, rank: int = TINY_LORA_RANK) -> dict[str, torch.Tensor]:
    """PEFT-style LoRA tensors in the transformers >= 4.52 naming, nonzero A and B, deltas ~10-20% of W."""
    g = _gen(seed, 2)
    modules = dict(vlm.named_modules())
    lora = {}
    for name, kind in _lora_targets():
        w = modules[name].weight
        if kind == "embedding":  # A [r, vocab], B [hidden, r]; no ".weight" suffix
            lora[f"lmm.{name}.lora_embedding_A.default"] = _rand((rank, w.shape[0]), g, 0.5)
            lora[f"lmm.{name}.lora_embedding_B.default"] = _rand((w.shape[1], rank), g, 0.1)
        else:
            out_f, in_f = w.shape
            lora[f"lmm.{name}.lora_A.default.weight"] = _rand((rank, in_f), g, in_f ** -0.5)
            lora[f"lmm.{name}.lora_B.default.weight"] = _rand((out_f, rank), g, 0.05)
    return lora


def lora_legacy_name(key: str) -> str:
    """transformers >= 4.52 LoRA name -> transformers 4.51 (deepgen_rl) name (docs/inference.md#vlm-lora)."""
    for new, old in (("lmm.model.language_model.", "lmm.model."), ("lmm.model.visual.", "lmm.visual.")):
        if key.startswith(new):
            return old + key[len(new):]
    return key


def merge_lora_legacy(base: dict[str, torch.Tensor], lora: dict[str, torch.Tensor],
                      scale: float = TINY_LORA_SCALE) -> dict[str, torch.Tensor]:
    """W += s * B @ A (linears), E += s * (B @ A)^T (embedding), lm_head skipped (docs/inference.md#pitfall-17); fp32."""
    merged = {k: v.float().clone() for k, v in base.items()}
    for key, a in lora.items():
        if ".lora_A." not in key and ".lora_embedding_A." not in key:
            continue
        module = key[len("lmm."):].split(".lora_")[0]
        if module == "lm_head":
            continue
        b = lora[key.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")].float()
        delta = b @ a.float()
        target = legacy_vlm_key(module) + ".weight"
        merged[target] += scale * (delta.T if "lora_embedding_A" in key else delta)
    return merged


def build_scb_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Connector + projectors + think tokens with the release's key names (docs/inference.md#scb-connector), fp32."""
    g = _gen(seed, 3)
    h, inter, llm = TINY_CONNECTOR["hidden_size"], TINY_CONNECTOR["intermediate_size"], TINY_TEXT["hidden_size"]
    shapes = {"meta_queries": (TINY_NUM_QUERIES, llm),
              "projector_1.weight": (h, TINY_NUM_STACKED * llm), "projector_1.bias": (h,),
              "projector_2.weight": (TINY_DIT["pooled_projection_dim"], h), "projector_2.bias": (TINY_DIT["pooled_projection_dim"],),
              "projector_3.weight": (TINY_DIT["joint_attention_dim"], h), "projector_3.bias": (TINY_DIT["joint_attention_dim"],)}
    for i in range(TINY_CONNECTOR["num_hidden_layers"]):
        p = f"connector.layers.{i}."
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[p + ln + ".weight"] = shapes[p + ln + ".bias"] = (h,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"], shapes[p + f"self_attn.{proj}.bias"] = (h, h), (h,)
        shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (inter, h), (inter,)
        shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (h, inter), (h,)
    state = {}
    for name in sorted(shapes):
        # think tokens are raw LLM input embeddings: same scale as embed_tokens
        state[name] = _rand(shapes[name], g, 1.0) if name == "meta_queries" else _loud_tensor(name, shapes[name], g)
    return state


def build_dit(seed: int = 0, stream: int = 4):
    from diffusers import SD3Transformer2DModel

    with _fixed_torch_state():
        return _randomize(SD3Transformer2DModel(**TINY_DIT).eval(), _gen(seed, stream))


def build_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    with _fixed_torch_state():
        return _randomize(AutoencoderKL(**TINY_VAE).eval(), _gen(seed, 6))


@dataclass
class TinyDeepGen:
    tokenizer: object
    vlm_base: object
    lora: dict
    vlm_merged_state: dict
    scb_state: dict
    scb_heads: int
    dit: object
    dit_base: object
    vae: object
    scheduler_config: dict
    seed: int = 0
    vlm_config: dict = field(default_factory=lambda: json.loads(json.dumps(TINY_VLM_CONFIG)))
    connector_config: dict = field(default_factory=lambda: dict(TINY_CONNECTOR))
    token_ids: dict = field(default_factory=lambda: dict(TINY_TOKEN_IDS))


def build_tiny_components(seed: int = 0) -> TinyDeepGen:
    vlm = build_vlm(seed)
    lora = build_lora(vlm, seed)
    return TinyDeepGen(
        tokenizer=load_tokenizer(), vlm_base=vlm, lora=lora,
        vlm_merged_state=merge_lora_legacy(legacy_vlm_state(vlm), lora),
        scb_state=build_scb_state(seed), scb_heads=TINY_CONNECTOR["num_attention_heads"],
        dit=build_dit(seed, 4), dit_base=build_dit(seed, 5), vae=build_vae(seed),
        scheduler_config=dict(TINY_SCHEDULER), seed=seed)


# ---------------------------------------------------------------------------------------------------
# Writers (docs/inference.md#checkpoints)


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def _write_hf_shards(folder: Path, state: dict[str, torch.Tensor], shards: int = 2) -> None:
    """model-0000i-of-0000n.safetensors + model.safetensors.index.json, as the hub/release VLM folders."""
    from safetensors.torch import save_file

    keys = sorted(state)
    per = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i * per:(i + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    _json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_vlm_folder(folder: Path, state: dict[str, torch.Tensor], with_tokenizer: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _json(folder / "config.json", TINY_VLM_CONFIG)
    _json(folder / "generation_config.json", TINY_GENERATION_CONFIG)
    _write_hf_shards(folder, state)
    if with_tokenizer:
        write_tokenizer(folder)
    return folder


def _write_scheduler(folder: Path, comps: TinyDeepGen) -> None:
    _json(folder / "scheduler_config.json",
          {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.35.2", **comps.scheduler_config})


def _write_diffusers_model(model, folder: Path) -> None:
    model.save_pretrained(str(folder), safe_serialization=True)


def write_diffusers_release(root, comps: TinyDeepGen) -> Path:
    """Layout of deepgenteam/DeepGen-1.0-diffusers (docs/inference.md#diffusers-layout); the VLM is the LoRA-merged one."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _json(root / "model_index.json", MODEL_INDEX)
    _json(root / "prompt_template.json", PROMPT_TEMPLATE)
    _write_diffusers_model(comps.dit, root / "transformer")
    _write_diffusers_model(comps.vae, root / "vae")
    _write_scheduler(root / "scheduler", comps)
    (root / "connector").mkdir(exist_ok=True)
    save_file({k: v.float() for k, v in _tensors(comps.scb_state).items()}, str(root / "connector" / "model.safetensors"),
              metadata={"format": "pt"})
    _json(root / "connector" / "config.json", comps.connector_config)
    _write_vlm_folder(root / "vlm", _tensors(comps.vlm_merged_state), with_tokenizer=False)
    write_tokenizer(root / "tokenizer")
    return root


def write_qwen_base(root, comps: TinyDeepGen) -> Path:
    """Stock Qwen/Qwen2.5-VL-3B-Instruct-style folder: un-merged VLM + tokenizer files side by side."""
    return _write_vlm_folder(Path(root), legacy_vlm_state(comps.vlm_base), with_tokenizer=True)


def write_unipic2_base(root, comps: TinyDeepGen) -> Path:
    """Skywork/UniPic2-SD3.5M-Kontext-2B-style folder: the base DiT (different weights), VAE, scheduler."""
    root = Path(root)
    _write_diffusers_model(comps.dit_base, root / "transformer")
    _write_diffusers_model(comps.vae, root / "vae")
    _write_scheduler(root / "scheduler", comps)
    return root


def native_state(comps: TinyDeepGen, lora: str | None = None) -> dict[str, torch.Tensor]:
    """Flat dict of deepgenteam/DeepGen-1.0 model.pt (docs/inference.md#native-layout); lora None | "new" | "legacy"."""
    if lora not in (None, "new", "legacy"):
        raise ValueError(f"lora must be None, 'new' or 'legacy', not {lora!r}")
    state = {"transformer." + k: v for k, v in comps.dit.state_dict().items()}
    state.update(comps.scb_state)
    if lora:
        state.update({(k if lora == "new" else lora_legacy_name(k)): v for k, v in comps.lora.items()})
    return _tensors(state)


def write_native_model_pt(path, comps: TinyDeepGen, lora: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(native_state(comps, lora), str(path))
    _json(path.parent / "config.json", NATIVE_CONFIG)  # the native repo ships this informational file too
    return path


def build_all_layouts(root, comps: TinyDeepGen | None = None) -> dict[str, Path]:
    root = Path(root)
    comps = comps or build_tiny_components()
    return {
        "diffusers": write_diffusers_release(root / "DeepGen-1.0-diffusers", comps),
        "qwen": write_qwen_base(root / "Qwen2.5-VL-3B-Instruct", comps),
        "unipic2": write_unipic2_base(root / "UniPic2-SD3.5M-Kontext-2B", comps),
        "native": write_native_model_pt(root / "DeepGen-1.0" / "model.pt", comps),
        "native_lora_new": write_native_model_pt(root / "DeepGen-1.0-lora-new" / "model.pt", comps, "new"),
        "native_lora_legacy": write_native_model_pt(root / "DeepGen-1.0-lora-legacy" / "model.pt", comps, "legacy"),
    }
