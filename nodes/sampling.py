"""DeepGenSampler (the official schedule + Euler + CFG) and DeepGenScheduler (its SIGMAS).

Both run through ComfyUI's own sampling stack (comfy.samplers CFGGuider + the core "euler"
sampler), so the progress bar, live latent previews, interruption at every step, model loading
and cond batching are core's. DeepGenSampler shows live previews even where no preview method was chosen
(preview_callback). Noise is comfy.sample.prepare_noise: fp32 on the CPU generator, the
same draw as deepgen_model.sampling.make_noise, so a seed gives the same image on any device.
"""
from __future__ import annotations

import logging
import sys

from comfy.cli_args import LatentPreviewMethod, args
from comfy_api.latest import io

import comfy.model_base
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

import torch

from ..deepgen_model.constants import DEFAULT_CFG, DEFAULT_STEPS, MAX_STEPS, REFERENCE_UNIT, VAE_DOWNSCALE
from ..deepgen_model.errors import DeepGenInputError
from ..deepgen_model.precision import nonfinite_cause
from ..deepgen_model.inputs import cfg_warning, check_cfg, check_steps
from .comfy_models import DeepGenMMDiT, model_sigmas
from .comfy_ops import compute_dtype
from .memory import memory_guard

log = logging.getLogger(__name__)


def _source(prompt, node_id, input_name) -> dict | None:
    """The node linked to input `input_name` of node `node_id` in the queued (API-format) prompt."""
    link = ((prompt or {}).get(str(node_id)) or {}).get("inputs", {}).get(input_name)
    src = prompt.get(str(link[0])) if isinstance(link, list) and len(link) == 2 else None
    if not isinstance(src, dict):
        return None
    kind = src.get("class_type", "?")
    title = (src.get("_meta") or {}).get("title") or kind
    name = f"{kind} (node {link[0]})" if title == kind else f'"{title}" ({kind}, node {link[0]})'
    return {"id": str(link[0]), "class": kind, "inputs": src.get("inputs") or {}, "name": name}


def _size_fix(src: dict | None, w: int, h: int, largest: int, reference: bool) -> str:
    """What to change on the node that set a size DeepGen cannot make (w x h px: the nearest valid size)."""
    inputs = (src or {}).get("inputs", {})
    one_reference = not any(f"image{i}" in inputs for i in range(2, 5))
    if src and src["class"] == "DeepGenEditEncode" and (reference or one_reference):  # max_side sets their size
        return f"set its max_side to {largest // REFERENCE_UNIT * REFERENCE_UNIT} or less"
    if reference:
        return f"give it a reference picture of at most {largest} px per side ({w}x{h} px is the nearest)"
    if all(isinstance(inputs.get(k), int) for k in ("width", "height")):
        return f"set its width and height to {w}x{h}, the nearest size DeepGen can make"
    return f"give it a picture DeepGen can take: {w}x{h} px is the nearest (e.g. resize it with Upscale Image)"


def _point_at(src: dict | None) -> None:
    """Asks the web extension (web/deepgen.js) to outline the node to change; nothing happens without a UI."""
    from server import PromptServer

    server = getattr(PromptServer, "instance", None)
    if src and server is not None:
        server.send_sync("deepgen.fix_node", {"node": src["id"]}, getattr(server, "client_id", None))


def _refusal(dit, h: int, w: int, why: str, src: dict | None, fallback: str, reference: bool) -> DeepGenInputError:
    """The error for an h x w latent (or reference latent) the DiT cannot take; outlines its source node."""
    px = VAE_DOWNSCALE
    nh, nw = dit.nearest_size(h, w)
    said = f"gives a {px * w}x{px * h} px reference picture" if reference else f"asks for a {px * w}x{px * h} px image"
    fix = _size_fix(src, px * nw, px * nh, px * dit.max_latent_side, reference)
    _point_at(src)
    return DeepGenInputError(f"{src['name'] if src else fallback} {said}, but {why}: {fix}.")


def check_sizes(model, latent_image: torch.Tensor, conds, prompt=None, node_id=None) -> None:
    """Refuse, before any work, latents and reference latents the DiT cannot take (its size_problem), naming
    the node that set the size (found in the queued `prompt` from this sampler's `node_id`) and offering the
    nearest valid size (its nearest_size); the web extension outlines that node."""
    dit = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(dit, DeepGenMMDiT) or latent_image.ndim != 4:
        refuse_ignored_references(model, conds)
        return  # not a DeepGen DiT: leave the checks to the model

    # references first: an edit's latent takes its reference's size, and max_side is what to change then
    for name, cond in conds:
        for _, info in cond or []:
            for r in info.get("reference_latents") or []:
                if why := dit.size_problem(*r.shape[-2:]):
                    raise _refusal(dit, *r.shape[-2:], why, _source(prompt, node_id, name), name, reference=True)
    if why := dit.size_problem(*latent_image.shape[-2:]):
        raise _refusal(dit, *latent_image.shape[-2:], why, _source(prompt, node_id, "latent"), "The latent",
                       reference=False)


def refuse_ignored_references(model, conds) -> None:
    """Reference images given to a core SD3 model (e.g. a saved DeepGen DiT loaded by core's UNETLoader) would be
    dropped without a word: refuse, naming the loader that keeps them."""
    if not isinstance(getattr(model, "model", None), comfy.model_base.SD3):
        return
    if any(info.get("reference_latents") for _, cond in conds for _, info in cond or []):
        raise DeepGenInputError(
            "this MODEL is ComfyUI's plain SD3 model, which ignores reference images (e.g. a saved DeepGen DiT "
            "loaded with Load Diffusion Model): load the DiT with DeepGen DiT Loader to edit with references.")


def previews_left_to_us() -> bool:
    """True when nobody chose a live-preview method: ComfyUI's default is none (no previews at all), and an
    artist who never heard of --preview-method expects to watch the picture form. An explicit
    `--preview-method ...` (none included), or a method a newer frontend sent with the prompt, is respected."""
    return args.preview_method == LatentPreviewMethod.NoPreviews and not any(
        a == "--preview-method" or a.startswith("--preview-method=") for a in sys.argv)


def preview_callback(model, steps: int):
    """Core's progress + live-preview callback; with no method chosen, core's latent2rgb previewer (the SD3
    latent format's colour factors: one small matrix product and a JPEG per step, no extra model)."""
    if not previews_left_to_us():
        return latent_preview.prepare_callback(model, steps)
    args.preview_method = LatentPreviewMethod.Latent2RGB  # core reads it only while building the previewer
    try:
        return latent_preview.prepare_callback(model, steps)
    finally:
        args.preview_method = LatentPreviewMethod.NoPreviews


def deepgen_sample(model, positive, negative, latent: dict, seed: int, steps: int, cfg: float, prompt=None,
                   node_id=None) -> dict:
    """LATENT dict out; cfg <= 1 runs the conditional branch only (as the official pipeline).

    Sizes are checked before any work; an out-of-memory error becomes a clear one (memory_guard), and
    NaN/inf samples are an error rather than a black image. Interrupts pass through untouched."""
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    check_sizes(model, latent_image, (("positive", positive), ("negative", negative)), prompt, node_id)
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    sigmas = model_sigmas(model, steps, latent_image.shape)
    callback = preview_callback(model, sigmas.shape[-1] - 1)
    with memory_guard("sampling with the DiT"):
        samples = comfy.sample.sample_custom(
            model, noise, max(float(cfg), 1.0), comfy.samplers.sampler_object("euler"), sigmas, positive, negative,
            latent_image, noise_mask=latent.get("noise_mask"), callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    if not torch.isfinite(samples).all():
        inputs = {"latent": latent_image, **{f"{name} conditioning": c[0] for name, cond in
                                             (("positive", positive), ("negative", negative)) for c in cond or []}}
        dit = getattr(model.model, "diffusion_model", torch.nn.Module())
        raise DeepGenInputError(nonfinite_cause("sampling", inputs, {"DiT": dit.named_parameters()},
                                                compute_dtype(model)) + ".")
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
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],  # to name the node that set a size DeepGen cannot make
        )

    @classmethod
    def validate_inputs(cls, cfg=None):  # only cfg: ComfyUI's min/max checks NaN as in range; steps keep core's check
        return True if cfg is None else _valid(check_cfg, cfg)

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg) -> io.NodeOutput:
        check_steps(steps, MAX_STEPS)  # again here: linked values skip validation
        check_cfg(cfg)
        notes = [note for note in (cfg_warning(cfg),) if note]  # shown on the node by the web extension
        for note in notes:
            log.warning("DeepGen Sampler: %s", note)
        latent = deepgen_sample(model, positive, negative, latent, seed, steps, cfg, cls.hidden.prompt,
                                cls.hidden.unique_id)
        return io.NodeOutput(latent, ui={"deepgen_warnings": notes})


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
