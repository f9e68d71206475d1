"""Refusing absurd configs, and configs the tensors contradict, before anything is allocated
(deepgen_model/validation.py checks the files themselves and calls these where it reads a config).

  check_config(cfg, component, path) -> cfg      types, positivity and plausible ranges of a config
  check_tensors(tensors, cfg, component, path)   tensor counts and anchor shapes against the config;
                                                 a config implying more parameters than the files hold
                                                 is refused (nothing is built from it)
  refuse(component, path, problem, fix)          the DeepGenLoadError every check here and in validation.py
                                                 raises: names the file, the component, the problem, the fix
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from . import download
from .constants import (LATENT_CHANNELS, SIZE_MULTIPLE, VAE_DOWNSCALE, VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR,
                        VIT_MERGE, VIT_PATCH, VIT_TEMPORAL)
from .errors import DeepGenLoadError
from .kinds import component_name

WHAT = {"VLM": "the VLM (the release's vlm/ folder or Qwen2.5-VL-3B-Instruct)", "SCB": "the SCB connector",
         "DiT": "the DiT (transformer/)", "VAE": "the VAE (vae/)", "tokenizer": "the tokenizer",
         "scheduler": "the scheduler"}


def redownload_fix(path) -> str:
    hint = download.fetch_hint(path)
    if hint:
        return f"download {Path(path).name} again: {hint}"
    return f"download {Path(path).name} again from the same release (the copy on disk is damaged or incomplete)"


def refuse(component, path, problem: str, fix: str | None = None):
    """Raise the DeepGenLoadError every check raises: the component, the file or folder, the problem, the fix
    (by default: download that file again)."""
    kind = "folder" if Path(str(path)).is_dir() and not Path(str(path)).suffix else "file"
    error = DeepGenLoadError(f"{component_name(component)} {kind} {path}: {problem}; {fix or redownload_fix(path)}.")
    error.problem = problem  # what check_weight_files lists, file by file
    raise error


# ------------------------------------------------------------------ configs

INT, FLOAT, NUM, REAL, INTS, IDS, BOOL, ONE_OF, TEXT, MAP = ("int", "float", "num", "real", "ints", "ids", "bool",
                                                             "one of", "text", "map")
# field: (kind, low, high, required); ONE_OF: (ONE_OF, allowed values, None, required). Every field the engine or
# the library it hands the config to (transformers, diffusers) reads is listed: sizes get generous ranges (the
# release's values are far inside them) that refuse what cannot be a model; fields that are not sizes are taken
# from the known architecture (ONE_OF its value): another value would load and quietly make another picture.
# INT/INTS: integers in low..high (IDS: one or a list); FLOAT: a finite number in (low, high] when low is 0, else
# low..high; NUM: a finite number in low..high (REAL: written with a decimal point, as transformers 5 demands of
# its float fields); TEXT: any string; MAP: a JSON object. ONE_OF compares JSON types too (1 is not 1.0 nor
# true). Unknown fields pass untouched (the libraries ignore them).
_DIM, _COUNT, _ID = (1, 1 << 16), (1, 1024), (0, (1 << 22) - 1)
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64", "auto")
_TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "vision_token_id")
_GENERATION_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # never used (no generation); eos may be a list
SPECS = {
    "VLM": {"hidden_size": (INT, *_DIM, True), "num_hidden_layers": (INT, *_COUNT, True),
            "num_attention_heads": (INT, *_COUNT, True), "num_key_value_heads": (INT, *_COUNT, False),
            "intermediate_size": (INT, 1, 1 << 20, True), "vocab_size": (INT, 1, 1 << 22, True),
            "max_position_embeddings": (INT, 1024, 1 << 24, True), "rms_norm_eps": (ONE_OF, (1e-6,), None, False),
            "rope_theta": (ONE_OF, (1e6,), None, False), "hidden_act": (ONE_OF, ("silu",), None, False),
            "use_sliding_window": (ONE_OF, (False,), None, False), "sliding_window": (INT, 1, 1 << 24, False),
            "max_window_layers": (INT, 0, 1 << 16, False), "attention_dropout": (REAL, 0, 1, False),
            "initializer_range": (REAL, 0, 10, False), "tie_word_embeddings": (BOOL, None, None, False),
            "use_cache": (BOOL, None, None, False), "torch_dtype": (ONE_OF, DTYPE_NAMES, None, False),
            "dtype": (ONE_OF, DTYPE_NAMES, None, False), "transformers_version": (TEXT, None, None, False),
            # transformers' own PretrainedConfig switches, as a saved config carries them
            "return_dict": (ONE_OF, (True,), None, False), "output_attentions": (ONE_OF, (False,), None, False),
            "output_hidden_states": (BOOL, None, None, False), "torchscript": (ONE_OF, (False,), None, False),
            "pruned_heads": (ONE_OF, ({},), None, False), "chunk_size_feed_forward": (ONE_OF, (0,), None, False),
            "is_encoder_decoder": (ONE_OF, (False,), None, False), "is_decoder": (BOOL, None, None, False),
            "add_cross_attention": (ONE_OF, (False,), None, False), "id2label": (MAP, None, None, False),
            "label2id": (MAP, None, None, False), "problem_type": (ONE_OF, (None,), None, False),
            **{field: (INT, *_ID, False) for field in _TOKEN_IDS},
            **{field: (IDS if field == "eos_token_id" else INT, *_ID, False) for field in _GENERATION_IDS}},
    "VLM vision": {"depth": (INT, *_COUNT, True), "hidden_size": (INT, *_DIM, True), "num_heads": (INT, *_COUNT, True),
                   "intermediate_size": (INT, 1, 1 << 20, True), "out_hidden_size": (INT, *_DIM, False),
                   "hidden_act": (ONE_OF, ("silu",), None, False), "patch_size": (ONE_OF, (VIT_PATCH,), None, False),
                   "spatial_patch_size": (ONE_OF, (VIT_PATCH,), None, False),
                   "spatial_merge_size": (ONE_OF, (VIT_MERGE,), None, False),
                   "temporal_patch_size": (ONE_OF, (VIT_TEMPORAL,), None, False),
                   "window_size": (ONE_OF, (112,), None, False), "in_chans": (ONE_OF, (3,), None, False),
                   "in_channels": (ONE_OF, (3,), None, False), "tokens_per_second": (INT, 1, 1 << 16, False),
                   "fullatt_block_indexes": (INTS, 0, 1023, False), "initializer_range": (REAL, 0, 10, False),
                   "model_type": (ONE_OF, ("qwen2_5_vl", "qwen2_5_vl_vision"), None, False),
                   "dtype": (ONE_OF, DTYPE_NAMES, None, False), "torch_dtype": (ONE_OF, DTYPE_NAMES, None, False)},
    "SCB": {"hidden_size": (INT, *_DIM, False), "num_attention_heads": (INT, *_COUNT, False),
            "intermediate_size": (INT, 1, 1 << 20, False), "num_hidden_layers": (INT, *_COUNT, False),
            "layer_norm_eps": (FLOAT, 0, 1, False), "llm_hidden_size": (INT, *_DIM, False),
            "num_stacked_layers": (INT, *_COUNT, False), "num_queries": (INT, 1, 1 << 16, False),
            "pooled_projection_dim": (INT, *_DIM, False), "joint_attention_dim": (INT, *_DIM, False),
            "hidden_act": (ONE_OF, ("gelu_pytorch_tanh",), None, False), "attention_dropout": (NUM, 0, 1, False)},
    "DiT": {"num_layers": (INT, *_COUNT, True), "num_attention_heads": (INT, *_COUNT, True),
            "attention_head_dim": (INT, 1, 4096, True),
            "patch_size": (ONE_OF, (SIZE_MULTIPLE // VAE_DOWNSCALE,), None, False),
            "in_channels": (ONE_OF, (LATENT_CHANNELS,), None, False),
            "out_channels": (ONE_OF, (LATENT_CHANNELS,), None, False), "joint_attention_dim": (INT, *_DIM, False),
            "caption_projection_dim": (INT, *_DIM, False), "pooled_projection_dim": (INT, *_DIM, False),
            "pos_embed_max_size": (INT, 1, 4096, False), "sample_size": (INT, 1, 1 << 16, False),
            "dual_attention_layers": (INTS, 0, 1023, False), "qk_norm": (ONE_OF, ("rms_norm",), None, False)},
    "VAE": {"in_channels": (ONE_OF, (3,), None, False), "out_channels": (ONE_OF, (3,), None, False),
            "latent_channels": (ONE_OF, (LATENT_CHANNELS,), None, False),
            "block_out_channels": (INTS, 1, 1 << 14, True),
            "layers_per_block": (INT, 1, 64, False), "norm_num_groups": (INT, 1, 1024, False),
            "sample_size": (INT, 1, 1 << 16, False), "scaling_factor": (ONE_OF, (VAE_SCALING_FACTOR,), None, False),
            "shift_factor": (ONE_OF, (VAE_SHIFT_FACTOR,), None, False), "act_fn": (ONE_OF, ("silu",), None, False),
            "use_quant_conv": (ONE_OF, (False,), None, False), "use_post_quant_conv": (ONE_OF, (False,), None, False),
            "mid_block_add_attention": (ONE_OF, (True,), None, False), "force_upcast": (BOOL, None, None, False)},
    "scheduler": {"num_train_timesteps": (INT, 1, 1 << 20, False), "shift": (FLOAT, 0, 1e4, False),
                  "_class_name": (ONE_OF, ("FlowMatchEulerDiscreteScheduler",), None, False),
                  "use_dynamic_shifting": (BOOL, None, None, False), "base_shift": (NUM, -10, 10, False),
                  "max_shift": (NUM, -10, 10, False), "base_image_seq_len": (INT, 1, 1 << 24, False),
                  "max_image_seq_len": (INT, 1, 1 << 24, False),
                  "time_shift_type": (ONE_OF, ("exponential", "linear"), None, False),
                  # diffusers options that change the sigma list in ways DeepGen never used (scheduler.py)
                  **{field: (ONE_OF, (False,), None, False) for field in
                     ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                      "stochastic_sampling")}, "shift_terminal": (ONE_OF, (None,), None, False)},
}
# fields whose null means "not set" to the libraries (JSON null elsewhere is passed on as None: refused)
NULLABLE = frozenset({*_TOKEN_IDS, *_GENERATION_IDS, "sliding_window", "torch_dtype", "dtype", "shift_terminal",
                      "problem_type"})
_ARCHITECTURE = {"VLM": "Qwen2.5-VL-3B, the VLM DeepGen is built on", "SCB": "DeepGen's SCB connector",
                 "DiT": "the SD3.5-Medium DiT DeepGen is built on", "VAE": "the SD3 VAE",
                 "scheduler": "DeepGen's flow-matching Euler schedule"}
_CONFIG_FILE = {"VLM": "config.json", "SCB": "config.json", "DiT": "config.json", "VAE": "config.json",
                "scheduler": "scheduler_config.json"}


def check_config(cfg, component, path) -> dict:
    """A parsed config checked for types, positivity, plausible ranges, the architecture's fixed values and
    the relations the architecture needs; returned unchanged. Unknown fields pass untouched."""
    component = component_name(component)
    what = f"{component} config"
    if not isinstance(cfg, dict):
        refuse(component, path, f"the {what} is a JSON {type(cfg).__name__ if cfg is not None else 'null'}, "
                               "not an object of settings", config_fix(component, path))
    if component == "VLM":
        if cfg.get("model_type") != "qwen2_5_vl":
            refuse(component, path, f"model_type is {json.dumps(cfg.get('model_type'))[:60]}, must be \"qwen2_5_vl\" "
                                   f"({_ARCHITECTURE['VLM']})", config_fix(component, path))
        text = cfg.get("text_config")
        if text is not None and not isinstance(text, dict):
            refuse(component, path, "text_config is not an object", config_fix(component, path))
        if isinstance(text, dict) and text.get("model_type") not in (None, "qwen2_5_vl", "qwen2_5_vl_text"):
            refuse(component, path, f"text_config.model_type is {json.dumps(text['model_type'])[:60]}, must be "
                                   f"\"qwen2_5_vl_text\" ({_ARCHITECTURE['VLM']})", config_fix(component, path))
        if isinstance(text, dict):
            for field in _TEXT_MODEL_FIELDS:
                if field not in text:
                    refuse(component, path, f"text_config has no {field} (transformers builds the language model "
                                           "from text_config alone when the config has one)", config_fix(component, path))
                if field in cfg and not _same(cfg[field], text[field]):
                    refuse(component, path, f"{field} is {json.dumps(cfg[field])[:30]} but text_config.{field} is "
                                           f"{json.dumps(text[field])[:30]}", config_fix(component, path))
        _check_fields(_vlm_text(cfg), SPECS["VLM"], component, path)
        vision = cfg.get("vision_config")
        if not isinstance(vision, dict):
            refuse(component, path, "the VLM config has no vision_config object", config_fix(component, path))
        _check_fields(vision, SPECS["VLM vision"], component, path, "vision_config.")
    elif component in SPECS:
        _check_fields(cfg, SPECS[component], component, path)
    for problem in _relations(cfg, component):
        refuse(component, path, f"the {what} is inconsistent: {problem}", config_fix(component, path))
    return cfg


# the language model's sizes: transformers reads them from text_config alone when a config has one
_TEXT_MODEL_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def config_fix(component, path) -> str:
    name = Path(str(path)).name
    if name.endswith(".safetensors"):
        return f"re-create {name} with `python -m deepgen_model.convert` from an intact release"
    return (f"download {_CONFIG_FILE.get(component, 'config.json')} of {WHAT.get(component, component)} again "
            "(it must come from the same release as the weights)")


def _vlm_text(cfg: dict) -> dict:
    """Text settings: flat in hub configs (transformers 4.x), under text_config when saved by 4.5x/5.x; a 5.x
    config keeps rope_theta inside rope_parameters."""
    text = cfg.get("text_config")
    merged = {**cfg, **text} if isinstance(text, dict) else dict(cfg)
    rope = _rope(merged)
    if isinstance(rope, dict) and "rope_theta" in rope and merged.get("rope_theta") is None:
        merged["rope_theta"] = rope["rope_theta"]
    return merged


def _rope(text: dict):
    """The multimodal rotary settings: rope_scaling (transformers 4.x) or rope_parameters (5.x)."""
    return text.get("rope_parameters") if text.get("rope_parameters") is not None else text.get("rope_scaling")


def _check_fields(cfg: dict, spec: dict, component, path, prefix: str = "") -> None:
    for field, (kind, lo, hi, required) in spec.items():
        if field not in cfg or (cfg[field] is None and field in NULLABLE):
            if required:
                refuse(component, path, f"the {component} config has no {prefix}{field}", config_fix(component, path))
            continue
        value = cfg[field]
        if kind == ONE_OF:
            if not any(_same(value, allowed) for allowed in lo):
                rule = f"{json.dumps(lo[0])} ({_ARCHITECTURE[component]})" if len(lo) == 1 else \
                    "one of " + ", ".join(json.dumps(v) for v in lo)
                refuse(component, path, f"{prefix}{field} is {json.dumps(value)[:60]}, must be {rule}",
                       config_fix(component, path))
            continue
        values = value if kind in (INTS, IDS) and isinstance(value, list) else [value]
        ok = (kind != INTS or isinstance(value, list)) and all(_in_range(v, kind, lo, hi) for v in values)
        if not ok:
            rule = {INT: "an integer", FLOAT: "a number", NUM: "a number", REAL: "a number with a decimal point",
                    INTS: "a list of integers",
                    IDS: "an integer or a list of integers",
                    BOOL: "true or false", TEXT: "a string", MAP: "a JSON object"}[kind]
            bound = ("" if kind in (BOOL, TEXT, MAP) else f" in ({lo}, {hi}]" if kind == FLOAT and lo == 0
                     else f" in {lo}..{hi}")
            refuse(component, path, f"{prefix}{field} is {json.dumps(value)[:60]}, must be {rule}{bound}",
                   config_fix(component, path))


def _same(value, allowed) -> bool:
    """JSON equality, types included: true is not 1, and 1 is not 1.0 (transformers 5 refuses an integer for a
    float field and the other way round)."""
    if isinstance(allowed, bool) or isinstance(value, bool) or allowed is None or value is None:
        return value is allowed
    return type(value) is type(allowed) and value == allowed


def _in_range(v, kind, lo, hi) -> bool:
    if kind == BOOL:
        return isinstance(v, bool)
    if kind == TEXT:
        return isinstance(v, str)
    if kind == MAP:
        return isinstance(v, dict)
    if isinstance(v, bool):
        return False
    if kind in (INT, INTS, IDS):
        return isinstance(v, int) and lo <= v <= hi
    if not (isinstance(v, float if kind == REAL else (int, float)) and math.isfinite(v)):
        return False
    return (lo < v if kind == FLOAT and lo == 0 else lo <= v) and v <= hi


def _relations(cfg: dict, component: str):
    if component == "VLM":
        t, v = _vlm_text(cfg), cfg["vision_config"]
        if t["hidden_size"] % t["num_attention_heads"]:
            yield f"hidden_size {t['hidden_size']} is not divisible by num_attention_heads {t['num_attention_heads']}"
            return
        if t.get("num_key_value_heads") and t["num_attention_heads"] % t["num_key_value_heads"]:
            yield (f"num_attention_heads {t['num_attention_heads']} is not a multiple of num_key_value_heads "
                   f"{t['num_key_value_heads']}")
        if v["hidden_size"] % v["num_heads"]:
            yield f"vision_config.hidden_size {v['hidden_size']} is not divisible by num_heads {v['num_heads']}"
        if v.get("out_hidden_size") not in (None, t["hidden_size"]):
            yield f"vision_config.out_hidden_size {v['out_hidden_size']} differs from hidden_size {t['hidden_size']}"
        yield from _rope_problems(t)
        blocks = v.get("fullatt_block_indexes")
        if blocks is not None and (not blocks or blocks != sorted(set(blocks)) or blocks[-1] >= v["depth"]):
            yield (f"vision_config.fullatt_block_indexes {blocks} must name distinct vision blocks in increasing "
                   f"order, below vision_config.depth {v['depth']}")
        layers = t.get("layer_types")
        if layers is not None and layers != ["full_attention"] * t["num_hidden_layers"]:
            yield (f"layer_types must be \"full_attention\" for each of the {t['num_hidden_layers']} layers "
                   f"({_ARCHITECTURE['VLM']} has no sliding-window layers)")
        beyond = [f for f in (*_TOKEN_IDS, *_GENERATION_IDS)
                  if any(i >= t["vocab_size"] for i in (t[f] if isinstance(t.get(f), list) else [t.get(f) or 0]))]
        if beyond:
            yield f"{beyond[0]} {t[beyond[0]]} is not below vocab_size {t['vocab_size']}"
    elif component == "SCB":
        h, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
        if h and heads and h % heads:
            yield f"hidden_size {h} is not divisible by num_attention_heads {heads}"
    elif component == "DiT":
        bad = [i for i in cfg.get("dual_attention_layers") or [] if i >= cfg["num_layers"]]
        if bad:
            yield f"dual_attention_layers {bad} are beyond num_layers {cfg['num_layers']}"
    elif component == "VAE":
        groups = cfg.get("norm_num_groups") or 32
        chans = cfg["block_out_channels"]
        if any(c % groups for c in chans):
            yield f"block_out_channels {chans} are not all divisible by norm_num_groups {groups}"
        if not 1 <= len(chans) <= 8:
            yield f"block_out_channels has {len(chans)} entries (1..8)"
        for field, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            if field in cfg and cfg[field] != [block] * len(chans):
                yield (f"{field} must be \"{block}\" for each of the {len(chans)} block_out_channels "
                       f"({_ARCHITECTURE['VAE']})")
    elif component == "scheduler" and cfg.get("use_dynamic_shifting"):
        base, top = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        if base >= top:
            yield f"use_dynamic_shifting needs base_image_seq_len {base} below max_image_seq_len {top}"


def _rope_problems(text: dict):
    """Qwen2.5-VL's multimodal rotary embedding: type mrope (4.x saves it as "default"), and mrope_section the
    split of head_dim / 2 into time, height and width: 1/4, 3/8, 3/8 ([16, 24, 24] at head_dim 128)."""
    rope = _rope(text)
    head = text["hidden_size"] // text["num_attention_heads"]
    want = [head // 8, 3 * head // 16, 3 * head // 16]
    if not isinstance(rope, dict):
        yield f"rope_scaling must be {{\"type\": \"mrope\", \"mrope_section\": {want}}} ({_ARCHITECTURE['VLM']})"
        return
    kinds = [rope[k] for k in ("type", "rope_type") if k in rope]
    if any(kind not in ("mrope", "default") for kind in kinds):
        yield f"rope_scaling type {json.dumps(kinds)[:60]} is not mrope ({_ARCHITECTURE['VLM']})"
    if not _same_list(rope.get("mrope_section"), want) or head % 16:
        yield (f"rope_scaling.mrope_section is {json.dumps(rope.get('mrope_section'))[:60]}, must be {want}: the "
               f"time/height/width split of head_dim / 2 = {head / 2:g} (hidden_size / num_attention_heads / 2)")


def _same_list(value, want: list) -> bool:
    return isinstance(value, list) and len(value) == len(want) and all(_same(v, w) for v, w in zip(value, want))


# ------------------------------------------------------------------ tensors against the config

def tensor_shapes(tensors) -> dict[str, tuple]:
    """name -> shape from a safetensors header (or several merged), a state dict, or name -> shape."""
    out = {}
    for name, v in tensors.items():
        if name == "__metadata__":
            continue
        shape = v.get("shape") if isinstance(v, dict) else getattr(v, "shape", v)
        out[name] = tuple(shape)
    return out


def _indices(shapes, pattern: str, exclude: str | None = None) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in shapes if (m := rx.search(k)) and not (exclude and exclude in k)}


def _anchor(shapes, suffix: str):
    hits = [k for k in shapes if k == suffix or k.endswith("." + suffix)]
    return (hits[0], shapes[hits[0]]) if len(hits) == 1 else (None, None)


def _expectations(cfg: dict, component: str):
    """(lower bound on the parameters the config implies, [(what, pattern, count)], [(suffix, shape)])."""
    if component == "VLM":
        t, v = _vlm_text(cfg), cfg["vision_config"]
        h, i, vv = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
        hv, iv = v["hidden_size"], v["intermediate_size"]
        low = vv * h + t["num_hidden_layers"] * (2 * h * h + 3 * h * i) + v["depth"] * (4 * hv * hv + 2 * hv * iv)
        counts = [("decoder layers (num_hidden_layers)", r"(?:^|\.)layers\.(\d+)\.", t["num_hidden_layers"], "visual"),
                  ("vision blocks (vision_config.depth)", r"visual\.blocks\.(\d+)\.", v["depth"], None)]
        kv = (t.get("num_key_value_heads") or t["num_attention_heads"]) * (h // t["num_attention_heads"])
        merged = hv * VIT_MERGE ** 2
        return low, counts, [("embed_tokens.weight", (vv, h)), ("layers.0.self_attn.k_proj.weight", (kv, h)),
                             ("layers.0.mlp.gate_proj.weight", (i, h)),
                             ("visual.patch_embed.proj.weight", (hv, 3, VIT_TEMPORAL, VIT_PATCH, VIT_PATCH)),
                             ("visual.blocks.0.attn.qkv.weight", (3 * hv, hv)),
                             ("visual.blocks.0.mlp.gate_proj.weight", (iv, hv)),
                             ("visual.merger.mlp.0.weight", (merged, merged)),
                             ("visual.merger.mlp.2.weight", (v.get("out_hidden_size") or h, merged))]
    if component == "DiT":
        inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        low = 12 * inner * inner * cfg["num_layers"]
        anchors = []
        p, cin = cfg.get("patch_size") or 2, cfg.get("in_channels") or 16
        anchors.append(("pos_embed.proj.weight", (inner, cin, p, p)))
        if cfg.get("pos_embed_max_size"):
            anchors.append(("pos_embed.pos_embed", (1, cfg["pos_embed_max_size"] ** 2, inner)))
            low = max(low, cfg["pos_embed_max_size"] ** 2 * inner)  # the position table is built in full
        if cfg.get("joint_attention_dim") and cfg.get("caption_projection_dim"):
            anchors.append(("context_embedder.weight", (cfg["caption_projection_dim"], cfg["joint_attention_dim"])))
        if cfg.get("pooled_projection_dim"):
            anchors.append(("time_text_embed.text_embedder.linear_1.weight", (inner, cfg["pooled_projection_dim"])))
        return low, [("transformer blocks (num_layers)", r"^transformer_blocks\.(\d+)\.", cfg["num_layers"], None)], anchors
    if component == "VAE":
        chans, per = cfg["block_out_channels"], cfg.get("layers_per_block") or 1
        low = 2 * 9 * per * sum(c * c for c in chans)
        anchors = [("encoder.conv_in.weight", (chans[0], cfg.get("in_channels") or 3, 3, 3))]
        return low, [("encoder blocks (block_out_channels)", r"^encoder\.down_blocks\.(\d+)\.", len(chans), None)], anchors
    if component == "SCB":
        h, i, n = cfg.get("hidden_size"), cfg.get("intermediate_size"), cfg.get("num_hidden_layers")
        low = n * (4 * h * h + 2 * h * i) if h and i and n else 0
        counts = [("connector layers (num_hidden_layers)", r"^connector\.layers\.(\d+)\.", n, None)] if n else []
        anchors = []
        if cfg.get("num_queries") and cfg.get("llm_hidden_size"):
            anchors.append(("meta_queries", (cfg["num_queries"], cfg["llm_hidden_size"])))
        if h and cfg.get("llm_hidden_size") and cfg.get("num_stacked_layers"):
            anchors.append(("projector_1.weight", (h, cfg["llm_hidden_size"] * cfg["num_stacked_layers"])))
        return low, counts, anchors
    return 0, [], []


def check_tensors(tensors, cfg: dict, component, path) -> None:
    """The tensors (a safetensors header, several merged, a state dict, or name -> shape) against what the
    (already checked) config implies: the layer counts, a few anchor shapes, and the parameter count, so
    that no config makes a loader build more than the files hold."""
    component = component_name(component)
    shapes = {k: s for k, s in tensor_shapes(tensors).items() if "lora" not in k}
    if not shapes:
        refuse(component, path, "holds no tensors")
    low, counts, anchors = _expectations(cfg, component)
    total = sum(math.prod(s) for s in shapes.values())
    fix = "the config and the weights come from different models, or one of them is damaged: download both again"
    if low > total:
        refuse(component, path, f"its config implies at least {low:,} parameters but the weights hold only {total:,}", fix)
    for what, pattern, want, exclude in counts:
        found = _indices(shapes, pattern, exclude)
        if found and found != set(range(want)):
            have = f"{len(found)} (indices {min(found)}..{max(found)})" if found else "none"
            refuse(component, path, f"the config says {want} {what} but the weights hold {have}", fix)
    for suffix, want in anchors:
        name, shape = _anchor(shapes, suffix)
        if name is not None and tuple(shape) != tuple(want):
            refuse(component, path, f"mis-shaped tensors (1): {name} {tuple(shape)} (expected {tuple(want)} from the "
                                   "config)", fix)
