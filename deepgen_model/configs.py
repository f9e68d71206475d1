"""Real-size component configs as data (docs/inference.md#vlm, #dit, #vae, #scheduler).

Used by the converter and the meta-device key tests, and as the DiT architecture when a native
`model.pt` is loaded without a UniPic2 folder. Never tuned: every value is the released one.
"""
from __future__ import annotations

import copy

from .constants import DEFAULT_SHIFT, NUM_TRAIN_TIMESTEPS

# docs/inference.md#vlm: hub-format config.json of Qwen/Qwen2.5-VL-3B-Instruct (flat text fields; 4.5x and 5.x load it).
QWEN25_VL_3B_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}

# docs/inference.md#dit: SD3.5-Medium / UniPic2-SD3.5M-Kontext-2B transformer (diffusers SD3Transformer2DModel kwargs).
SD35M_KONTEXT_DIT_CONFIG = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}

# docs/inference.md#vae: SD3 / SD3.5 AutoencoderKL.
SD3_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}

# docs/inference.md#scheduler: used only when no scheduler_config.json is available (native model.pt without a UniPic2 folder).
FALLBACK_SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "shift": DEFAULT_SHIFT,
    "use_dynamic_shifting": False,
}

def get(name: str) -> dict:
    """A deep copy of one config, so callers can edit it freely."""
    table = {"vlm": QWEN25_VL_3B_CONFIG, "dit": SD35M_KONTEXT_DIT_CONFIG, "vae": SD3_VAE_CONFIG,
             "scheduler": FALLBACK_SCHEDULER_CONFIG}
    return copy.deepcopy(table[name])
