"""DeepGenSampler (the official schedule + Euler + CFG) and DeepGenScheduler (its SIGMAS).

Both run through ComfyUI's own sampling stack (comfy.samplers CFGGuider + the core "euler"
sampler), so the progress bar, live latent previews, interruption at every step, model loading
and cond batching are core's. Noise is comfy.sample.prepare_noise: fp32 on the CPU generator, the
same draw as deepgen_model.sampling.make_noise, so a seed gives the same image on any device.
"""
from __future__ import annotations

from comfy_api.latest import io

import comfy.model_base
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

import torch

from ..deepgen_model.constants import DEFAULT_CFG, DEFAULT_STEPS, MAX_STEPS
from ..deepgen_model.errors import DeepGenInputError
from ..deepgen_model.precision import nonfinite_cause
from ..deepgen_model.validation import check_cfg, check_steps
from .comfy_models import DeepGenMMDiT, model_sigmas
from .memory import memory_guard


def check_sizes(model, latent_image: torch.Tensor, conds) -> None:
    """Refuse, naming the input, latents the DiT cannot take: sides not multiples of its patch (16 px
    with the SD3 VAE) or beyond its position table; reference latents (DeepGenEditEncode max_side) too."""
    dit = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(dit, DeepGenMMDiT) or latent_image.ndim != 4:
        refuse_ignored_references(model, conds)
        return  # not a DeepGen DiT: leave the checks to the model
    _, p, limit = dit.size_limits

    # references first: an edit's latent takes its reference's size, and max_side is what to change then
    for name, cond in conds:
        for _, info in cond or []:
            for r in info.get("reference_latents") or []:
                rh, rw = r.shape[-2:]
                if why := dit.size_problem(rh, rw):
                    raise DeepGenInputError(
                        f"{name} carries a reference latent of {8 * rw}x{8 * rh} px: {why}. Lower max_side of "
                        "DeepGen Edit Encode (or the size of the image given to ReferenceLatent).")
    h, w = latent_image.shape[-2:]
    if why := dit.size_problem(h, w):
        raise DeepGenInputError(
            f"latent is {8 * w}x{8 * h} px ({w}x{h} latent): {why}. Set the empty latent's width/height to "
            f"multiples of {8 * p} (e.g. {8 * p * max(1, w // p)}x{8 * p * max(1, h // p)}) within {8 * limit} px, "
            "or scale/crop the encoded image to such a size.")


def refuse_ignored_references(model, conds) -> None:
    """Reference images given to a core SD3 model (e.g. a saved DeepGen DiT loaded by core's UNETLoader) would be
    dropped without a word: refuse, naming the loader that keeps them."""
    if not isinstance(getattr(model, "model", None), comfy.model_base.SD3):
        return
    if any(info.get("reference_latents") for _, cond in conds for _, info in cond or []):
        raise DeepGenInputError(
            "this MODEL is ComfyUI's plain SD3 model, which ignores reference images (e.g. a saved DeepGen DiT "
            "loaded with Load Diffusion Model): load the DiT with DeepGen DiT Loader to edit with references.")


def deepgen_sample(model, positive, negative, latent: dict, seed: int, steps: int, cfg: float) -> dict:
    """LATENT dict out; cfg <= 1 runs the conditional branch only (as the official pipeline).

    Sizes are checked before any work; an out-of-memory error becomes a clear one (memory_guard), and
    NaN/inf samples are an error rather than a black image. Interrupts pass through untouched."""
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    check_sizes(model, latent_image, (("positive", positive), ("negative", negative)))
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    sigmas = model_sigmas(model, steps, latent_image.shape)
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    with memory_guard("sampling with the DiT"):
        samples = comfy.sample.sample_custom(
            model, noise, max(float(cfg), 1.0), comfy.samplers.sampler_object("euler"), sigmas, positive, negative,
            latent_image, noise_mask=latent.get("noise_mask"), callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    if not torch.isfinite(samples).all():
        inputs = {"latent": latent_image, **{f"{name} conditioning": c[0] for name, cond in
                                             (("positive", positive), ("negative", negative)) for c in cond or []}}
        dit = getattr(model.model, "diffusion_model", torch.nn.Module())
        dtype = getattr(model.model, "manual_cast_dtype", None) or model.model_dtype()
        raise DeepGenInputError(nonfinite_cause("sampling", inputs, {"DiT": dit.named_parameters()}, dtype) + ".")
    out = latent.copy()
    out["samples"] = samples
    return out


def _valid(check, value) -> bool | str:
    try:
        check(value)
    except DeepGenInputError as e:
        return str(e)
    return True


class DeepGenSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenSampler",
            display_name="DeepGen Sampler",
            category="DeepGen/sampling",
            description="Samples with DeepGen's official flow-matching schedule, Euler steps and "
                        "classifier-free guidance (the authors' defaults: 50 steps, cfg 4.0).",
            inputs=[
                io.Model.Input("model", tooltip="The DeepGen MODEL (DeepGenDiTLoader or DeepGenCheckpointLoader)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning from DeepGen Text/Edit Encode."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning from the same DeepGen encode node."),
                io.Latent.Input("latent", tooltip="The latent to fill: its size sets the image size "
                                                  "(e.g. EmptySD3LatentImage, or the edit encode's latent)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed (64-bit); noise is drawn on the CPU, so a seed gives the same "
                                     "image on every device."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS,
                             tooltip="Number of Euler steps of the official schedule (authors: 50)."),
                io.Float.Input("cfg", default=DEFAULT_CFG, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (authors: 4.0). At 1 or below only the "
                                       "positive branch runs."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT")],
        )

    @classmethod
    def validate_inputs(cls, cfg=None):  # only cfg: ComfyUI's min/max checks NaN as in range; steps keep core's check
        return True if cfg is None else _valid(check_cfg, cfg)

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg) -> io.NodeOutput:
        check_steps(steps, MAX_STEPS)  # again here: linked values skip validation
        check_cfg(cfg)
        return io.NodeOutput(deepgen_sample(model, positive, negative, latent, seed, steps, cfg))


class DeepGenScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenScheduler",
            display_name="DeepGen Scheduler",
            category="DeepGen/sampling",
            description="The official DeepGen sigma list (diffusers' FlowMatchEulerDiscreteScheduler at the "
                        "model's shift) for SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip="The DeepGen MODEL; its flow shift sets the schedule."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS,
                             tooltip="Number of sampling steps (authors: 50)."),
            ],
            outputs=[io.Sigmas.Output(display_name="SIGMAS")],
        )

    @classmethod
    def execute(cls, model, steps) -> io.NodeOutput:
        check_steps(steps, MAX_STEPS)
        return io.NodeOutput(model_sigmas(model, steps))


NODES = [DeepGenSampler, DeepGenScheduler]
