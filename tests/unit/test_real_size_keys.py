"""Real-size architectures on the meta device: the key mapping covers every released tensor (docs/inference.md#sizes)."""
import pytest
import torch
from accelerate import init_empty_weights

from deepgen_model import configs
from deepgen_model.keys import count_families, normalize_vlm_keys, to_legacy
from deepgen_model.lora import group_lora, iter_merged
from deepgen_model.scb import SCBConfig, SCBConnector

# docs/inference.md#sizes: what the real checkpoints hold (tensor count, element count).
REAL_SIZES = {
    "dit": (909, 2_469_663_936),
    "scb": (103, 432_449_532),
    "vlm": (824, 3_754_622_976),
    "vlm_lora": (832, 185_163_776),
    "vae": (244, 83_819_683),
}


def _numel(state):
    return sum(t.numel() for t in state.values())


def test_dit_909_tensors():
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        dit = SD3Transformer2DModel.from_config(configs.get("dit"))
    sd = dit.state_dict()
    assert (len(sd), _numel(sd)) == REAL_SIZES["dit"] == (909, 2_469_663_936)
    assert tuple(sd["pos_embed.pos_embed"].shape) == (1, 147456, 1536)  # the persistent buffer (docs/inference.md#pitfall-16)
    assert tuple(sd["transformer_blocks.0.norm1.linear.weight"].shape) == (13824, 1536)
    assert "transformer_blocks.23.ff_context.net.2.weight" not in sd  # last block: context_pre_only
    native = {"transformer." + k for k in sd}
    assert count_families(native)["transformer"] == 909


def test_scb_103_tensors():
    with torch.device("meta"):
        scb = SCBConnector(SCBConfig())
    sd = scb.state_dict()
    assert (len(sd), _numel(sd)) == REAL_SIZES["scb"] == (103, 432_449_532)
    fam = count_families(sd)
    assert (fam["connector"], fam["projector"], fam["meta_queries"]) == (96, 6, 1)


@pytest.fixture(scope="module")
def real_vlm():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with init_empty_weights():
        return Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig.from_dict(configs.get("vlm")))


def test_vlm_824_legacy_keys_map_one_to_one(real_vlm):
    runtime = real_vlm.state_dict()
    legacy = {to_legacy(k): v for k, v in runtime.items() if k != "lm_head.weight"}
    assert (len(legacy), _numel(legacy)) == REAL_SIZES["vlm"] == (824, 3_754_622_976)
    assert {"model.embed_tokens.weight", "model.norm.weight", "visual.patch_embed.proj.weight",
            "visual.merger.mlp.2.weight", "model.layers.35.mlp.down_proj.weight"} <= set(legacy)
    mapped, unknown = normalize_vlm_keys(legacy, runtime)
    assert unknown == [] and len(mapped) == 824 and set(mapped) == set(runtime) - {"lm_head.weight"}
    assert all(tuple(mapped[k].shape) == tuple(runtime[k].shape) for k in mapped)
    # runtime names map onto themselves too (a release saved with new-style names)
    assert normalize_vlm_keys({k: v for k, v in runtime.items()}, runtime)[1] == []


def _release_lora(vlm, rank=64):
    """The 832 PEFT tensor names/shapes of docs/inference.md#vlm (every Linear and Embedding of the VLM), on meta."""
    lora = {}
    for name, m in vlm.named_modules():
        if isinstance(m, torch.nn.Embedding):
            lora[f"lmm.{name}.lora_embedding_A.default"] = torch.empty(rank, m.num_embeddings, device="meta")
            lora[f"lmm.{name}.lora_embedding_B.default"] = torch.empty(m.embedding_dim, rank, device="meta")
        elif isinstance(m, torch.nn.Linear):
            lora[f"lmm.{name}.lora_A.default.weight"] = torch.empty(rank, m.in_features, device="meta")
            lora[f"lmm.{name}.lora_B.default.weight"] = torch.empty(m.out_features, rank, device="meta")
    return lora


def test_real_lora_targets_all_match(real_vlm):
    lora = _release_lora(real_vlm)
    assert (len(lora), _numel(lora)) == REAL_SIZES["vlm_lora"] == (832, 185_163_776)
    pairs = group_lora(lora)
    assert len(pairs) == 416 and "lm_head" in pairs
    legacy_state = {to_legacy(k): v for k, v in real_vlm.state_dict().items() if k != "lm_head.weight"}
    merged = dict(iter_merged(legacy_state, lora))  # meta tensors: checks names and shapes, no memory
    assert len(merged) == 415 and "model.embed_tokens.weight" in merged and "lm_head.weight" not in merged
    old = {k.replace("lmm.model.language_model.", "lmm.model.").replace("lmm.model.visual.", "lmm.visual."): v
           for k, v in lora.items()}  # transformers 4.51 naming
    assert set(dict(iter_merged(legacy_state, old))) == set(merged)


def test_vae_244_tensors():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(configs.get("vae"))
    sd = vae.state_dict()
    assert (len(sd), _numel(sd)) == REAL_SIZES["vae"]
