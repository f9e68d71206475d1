"""deepgen_model/mmdit_format.py: the DiT's weights in MMDiT names (what ComfyUI runs and saves) and back, and a
DiT saved by ComfyUI's ModelSave read as a release of its own (no ComfyUI needed here; the integration tests
check the names against ComfyUI's own converter)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from deepgen_model import loading
from deepgen_model.errors import DeepGenLoadError
from deepgen_model.mmdit_format import from_mmdit, is_mmdit, mmdit_config, strip_saved_prefix, to_mmdit
from deepgen_model.release import Release


def _state(tiny):
    return {k: v.clone() for k, v in tiny.dit.state_dict().items()}


def test_round_trip_is_exact_and_the_config_is_read_off_the_shapes(tiny):
    state = _state(tiny)
    mm = to_mmdit(dict(state), tiny.dit.config.num_layers)
    assert is_mmdit(mm) and not is_mmdit(state)
    q, k, v = (state[f"transformer_blocks.0.attn.to_{x}.weight"] for x in "qkv")
    assert torch.equal(mm["joint_blocks.0.x_block.attn.qkv.weight"], torch.cat([q, k, v]))
    scale, shift = state["norm_out.linear.weight"].chunk(2)  # diffusers: (scale, shift); MMDiT: (shift, scale)
    assert torch.equal(mm["final_layer.adaLN_modulation.1.weight"], torch.cat([shift, scale]))
    back, config = from_mmdit(mm, "saved")
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    want = {k: v for k, v in dict(tiny.dit.config).items() if not k.startswith("_") and k != "sample_size"}
    assert {k: config[k] for k in want} == {**want, "dual_attention_layers": [0]}


def test_to_mmdit_consumes_its_input_and_refuses_unknown_tensors(tiny):
    state = _state(tiny)
    to_mmdit(state, tiny.dit.config.num_layers)
    assert state == {}  # each q/k/v is released as soon as it is fused: the peak stays near one copy
    with pytest.raises(DeepGenLoadError, match="no MMDiT counterpart.*extra.weight"):
        to_mmdit({**_state(tiny), "extra.weight": torch.zeros(1)}, tiny.dit.config.num_layers)


def test_mmdit_config_needs_sd3_heads(tiny):
    config = dict(tiny.dit.config)
    assert mmdit_config(config)["depth"] == 3 and mmdit_config(config)["num_blocks"] == 3
    with pytest.raises(DeepGenLoadError, match="3 heads of 32 channels.*64-channel heads"):
        mmdit_config({**config, "attention_head_dim": 32})
    with pytest.raises(DeepGenLoadError, match="qk_norm is 'layer_norm'"):
        mmdit_config({**config, "qk_norm": "layer_norm"})


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "diffusion_model.", ""])
def test_a_dit_saved_by_comfyui_is_a_release_of_its_own(tiny, tmp_path, prefix):
    """What ModelSave writes (model.diffusion_model.<MMDiT name>, no config) loads through the engine too."""
    mm = to_mmdit(_state(tiny), tiny.dit.config.num_layers)
    path = tmp_path / "ComfyUI_00001_.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in mm.items()}, str(path),
              metadata={"modelspec.architecture": "stable-diffusion-v3-medium"})
    release = Release.open(path)
    part = release.dit_part()
    assert all(torch.equal(part.tensors[k], v) for k, v in tiny.dit.state_dict().items())
    assert release.scheduler_config()["shift"] == 3.0  # nothing saved: the release's shift
    dit = loading.load_dit(release)
    assert all(torch.equal(dit.state_dict()[k], v) for k, v in tiny.dit.state_dict().items())


def test_another_models_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "flux.safetensors"
    save_file({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(DeepGenLoadError, match="flux.safetensors is neither a DeepGen converted DiT.*ModelSave"):
        Release.open(path).dit_part()
    plain = {"a": torch.zeros(1)}
    assert strip_saved_prefix(plain) is plain
