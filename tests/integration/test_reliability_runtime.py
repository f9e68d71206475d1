"""Reliability (issue 7): out-of-memory, NaN and /interrupt in the middle of a job, in a real ComfyUI (in-process).

Out-of-memory is simulated (no GPU in CI): a forward of the VLM / DiT, or the VLM loading, raises what torch
raises (torch.OutOfMemoryError for CUDA, the CPU allocator's RuntimeError). Each must end in a clear error
that names the stage and what to change, with ComfyUI's models unloaded; the interrupt must stop the job at
the next layer/step/node. After every incident the same prompt must give exactly the picture of a fresh run.
"""
from __future__ import annotations

import sys

import pytest
import torch


RELEASE = "DeepGen-1.0-diffusers"
SIZE = 32
OOM_TEXT = "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 7.79 GiB total capacity)"
CPU_OOM_TEXT = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                "you tried to allocate 35184372088832 bytes. Error code 12 (Cannot allocate memory)")


@pytest.fixture(scope="module")
def comfy(comfy_inprocess, release):  # the session's tiny release is the RELEASE the graphs load
    return comfy_inprocess


def pack(comfy, name):
    return sys.modules[f"{comfy.pack.__name__}.{name}"]


def graph(prompt="a small red house", steps=1, seed=11) -> dict:
    return {
        "1": {"class_type": "DeepGenCheckpointLoader",
              "inputs": {"ckpt_name": RELEASE, "vlm_base": "none", "dit_base": "none", "weight_dtype": "fp32",
                         "quantization": "none", "attention": "sdpa"}},
        "3": {"class_type": "DeepGenTextEncode",
              "inputs": {"vlm": ["1", 1], "scb": ["1", 2], "prompt": prompt, "negative_prompt": ""}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "5": {"class_type": "DeepGenSampler",
              "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 1], "latent": ["4", 0],
                         "seed": seed, "steps": steps, "cfg": 4.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 3]}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
    }


def image(comfy, prompt, fresh=False) -> torch.Tensor:
    ok, _, msgs = comfy.run(prompt, fresh=fresh)
    assert ok, repr(msgs)[-3000:]
    img = comfy.node_output("6")[0][0]
    assert torch.isfinite(img).all() and img.std() > 0.02
    return img.clone()


def failure(comfy, prompt, fresh=False, on_event=None) -> tuple[str, dict]:
    ok, _, msgs = comfy.run(prompt, fresh=fresh, on_event=on_event)
    assert not ok
    kind, data = [(k, d) for k, d in msgs if k in ("execution_error", "execution_interrupted")][-1]
    return kind, data


# one prompt per test: the executor caches the last prompt's outputs, and each incident must hit a real run
PROMPTS = {"vlm_oom": "vlm oom", "dit_oom": "dit oom", "load_oom": "load oom", "vlm_int": "vlm interrupt",
           "dit_int": "dit interrupt", "vae_int": "vae interrupt", "scb_int": "scb interrupt"}


@pytest.fixture(scope="module")
def baseline(comfy):
    """The picture of each prompt below, made before any incident (the first run on a fresh executor)."""
    out = {}
    for i, (key, text) in enumerate(PROMPTS.items()):
        out[key] = image(comfy, graph(text, steps=3 if key == "dit_int" else 1), fresh=i == 0)
    image(comfy, graph("something else"))  # leaves none of the prompts above cached
    return out


def text_layer_class(comfy):
    vlm = comfy.node_output("1")[1][0].model.vlm
    return type(pack(comfy, "deepgen_model.compat").vlm_parts(vlm)[1].layers[0])


# ------------------------------------------------------------------ out of memory

def _assert_released(comfy):
    import comfy.model_management as mm

    assert not mm.current_loaded_models, "models should be unloaded after an out-of-memory error"


def test_gpu_oom_during_vlm_encode(comfy, baseline, monkeypatch):
    cls = text_layer_class(comfy)

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError(OOM_TEXT)

    monkeypatch.setattr(cls, "forward", oom)
    kind, err = failure(comfy, graph(PROMPTS["vlm_oom"]))
    assert kind == "execution_error" and err["node_id"] == "3"
    assert err["exception_type"] == "torch.OutOfMemoryError"  # still an OOM for ComfyUI's own handling
    msg = err["exception_message"]
    assert "ran out of GPU memory while encoding the prompt" in msg and "Tried to allocate 20.00 GiB" in msg
    assert "'8-bit'" in msg and "--lowvram" in msg and "max_side" in msg
    _assert_released(comfy)
    monkeypatch.undo()
    assert torch.equal(image(comfy, graph(PROMPTS["vlm_oom"])), baseline["vlm_oom"])


def test_gpu_oom_during_sampling(comfy, baseline, monkeypatch):
    dit = pack(comfy, "nodes.comfy_models").DeepGenMMDiT

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError(OOM_TEXT)

    image(comfy, graph(PROMPTS["dit_oom"], seed=12))  # everything up to the sampler cached
    monkeypatch.setattr(dit, "_forward", oom)
    kind, err = failure(comfy, graph(PROMPTS["dit_oom"]))
    assert kind == "execution_error" and err["node_id"] == "5"
    msg = err["exception_message"]
    assert "ran out of GPU memory while sampling" in msg and "smaller width/height" in msg and "--lowvram" in msg
    _assert_released(comfy)
    monkeypatch.undo()
    assert torch.equal(image(comfy, graph(PROMPTS["dit_oom"])), baseline["dit_oom"])


def test_cpu_allocation_failure_while_loading(comfy, baseline, monkeypatch):
    vlm_loading = pack(comfy, "deepgen_model.vlm_loading")

    def fail(*args, **kwargs):
        raise RuntimeError(CPU_OOM_TEXT)

    monkeypatch.setattr(vlm_loading, "load_vlm", fail)
    kind, err = failure(comfy, graph(PROMPTS["load_oom"]), fresh=True)
    assert kind == "execution_error" and err["node_id"] == "1" and err["exception_type"] == "MemoryError"
    msg = err["exception_message"]
    assert "ran out of system memory while loading the VLM" in msg and "'8-bit'" in msg and "bf16" in msg
    monkeypatch.undo()
    assert torch.equal(image(comfy, graph(PROMPTS["load_oom"])), baseline["load_oom"])


def test_cpu_allocation_failure_while_loading_the_dit(comfy, baseline, monkeypatch):
    loading = pack(comfy, "deepgen_model.loading")

    def fail(*args, **kwargs):
        raise RuntimeError(CPU_OOM_TEXT)

    monkeypatch.setattr(loading, "dit_weights", fail)
    kind, err = failure(comfy, graph(PROMPTS["load_oom"]), fresh=True)
    assert kind == "execution_error" and err["node_id"] == "1" and err["exception_type"] == "MemoryError"
    msg = err["exception_message"]
    assert "ran out of system memory while loading the DiT" in msg and "fp8_e4m3fn" in msg
    monkeypatch.undo()
    assert torch.equal(image(comfy, graph(PROMPTS["load_oom"])), baseline["load_oom"])


def test_other_errors_are_not_disguised_as_oom(comfy, monkeypatch):
    dit = pack(comfy, "nodes.comfy_models").DeepGenMMDiT

    def boom(self, *args, **kwargs):
        raise RuntimeError("some unrelated failure")

    image(comfy, graph("unrelated"))
    monkeypatch.setattr(dit, "_forward", boom)
    _, err = failure(comfy, graph("unrelated", seed=13))
    assert err["exception_type"] == "RuntimeError" and err["exception_message"].startswith("some unrelated failure")


def test_nan_output_is_an_error_not_a_black_image(comfy, monkeypatch):
    dit = pack(comfy, "nodes.comfy_models").DeepGenMMDiT

    def nan(self, x, *args, **kwargs):
        return torch.full_like(x, float("nan"))

    image(comfy, graph("nan"))
    monkeypatch.setattr(dit, "_forward", nan)
    kind, err = failure(comfy, graph("nan", seed=14))
    assert kind == "execution_error" and err["node_id"] == "5"
    assert "NaN" in err["exception_message"] and "weight_dtype" in err["exception_message"]
    # inputs and weights are finite: the message names the dtype the MODEL computes in (comfy_ops.compute_dtype)
    assert "computes in float32 (not a float16 overflow)" in err["exception_message"], err["exception_message"]


@pytest.mark.parametrize("part, node, cause", [
    ("dit", "5", "sampling produced NaN or infinite values because the DiT weights hold them"),
    ("vlm", "3", "encoding the prompt produced NaN or infinite values because the VLM weights hold them")])
def test_nan_weights_are_named_as_the_cause_not_fp16(comfy, part, node, cause):
    """Issue 20: weights that hold NaN, loaded in fp32, were still told "typically fp16 weights"."""
    image(comfy, graph(f"nan {part} weights"))  # the checkpoint loaded (and cached) as usual, weight_dtype fp32
    patchers = comfy.node_output("1")
    module = patchers[0][0].model.diffusion_model if part == "dit" else patchers[1][0].model.vlm
    saved = {n: p.detach().clone() for n, p in module.named_parameters()}
    try:
        with torch.inference_mode():  # ComfyUI made them inside inference mode
            for p in module.parameters():
                p.fill_(float("nan"))
        kind, err = failure(comfy, graph(f"nan {part} weights", seed=16) if part == "dit"
                            else graph(f"nan {part} weights, again"))
    finally:
        with torch.inference_mode():
            for n, p in module.named_parameters():
                p.copy_(saved[n])
    assert kind == "execution_error" and err["node_id"] == node, err
    msg = err["exception_message"]
    assert msg.startswith(cause) and "download" in msg and "fp16" not in msg and "float16" not in msg, msg
    image(comfy, graph(f"nan {part} weights", seed=17))  # weights back: pictures again


# ------------------------------------------------------------------ interrupts

@pytest.mark.parametrize("stage, at", [("vlm", 3), ("scb", 2)])
def test_interrupt_during_encode_stops_at_the_next_layer(comfy, baseline, monkeypatch, stage, at):
    """Interrupted while VLM decoder layer 3, or SCB layer 2, runs: the next layer never starts."""
    cls = text_layer_class(comfy) if stage == "vlm" else pack(comfy, "deepgen_model.scb").ConnectorLayer
    original, calls = cls.forward, []

    def counting(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            comfy.interrupt()  # as POST /interrupt does, while that layer runs
        return original(self, *args, **kwargs)

    key = f"{stage}_int"
    monkeypatch.setattr(cls, "forward", counting)
    kind, data = failure(comfy, graph(PROMPTS[key]))
    assert kind == "execution_interrupted" and data["node_id"] == "3"
    assert len(calls) == at, f"{len(calls)} {stage} layers ran; layer {at + 1} must not start"
    monkeypatch.undo()
    assert torch.equal(image(comfy, graph(PROMPTS[key])), baseline[key])


def test_interrupt_during_sampling_then_identical_result(comfy, baseline):
    def on_event(event, data):
        if event == "progress" and data.get("node") == "5" and data["value"] == 1:
            comfy.interrupt()

    kind, data = failure(comfy, graph(PROMPTS["dit_int"], steps=3), on_event=on_event)
    assert kind == "execution_interrupted" and data["node_id"] == "5"
    assert torch.equal(image(comfy, graph(PROMPTS["dit_int"], steps=3)), baseline["dit_int"])


def test_interrupt_during_vae_decode(comfy, baseline, monkeypatch):
    """Core's VAE decode has no interruption point inside: the job stops before the next node runs."""
    import comfy.sd as core_sd

    original, decoded = core_sd.VAE.decode, []

    def decode_then_interrupt(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        decoded.append(1)
        comfy.interrupt()  # arrives while the decode runs
        return out

    monkeypatch.setattr(core_sd.VAE, "decode", decode_then_interrupt)
    kind, data = failure(comfy, graph(PROMPTS["vae_int"]))
    assert decoded and kind == "execution_interrupted" and data["node_id"] == "7"
    monkeypatch.undo()
    assert torch.equal(image(comfy, graph(PROMPTS["vae_int"])), baseline["vae_int"])
