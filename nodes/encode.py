"""DeepGenTextEncode / DeepGenEditEncode: prompts (+ references) -> CONDITIONING (docs/inference.md#prompts, #editing).

Positive and negative come from ONE joint encode, so both carry the official shared left padding
(docs/inference.md#pitfall-1) and have the same length (ComfyUI never has to repeat context tokens:
docs/inference.md#pitfall-3).
Both nodes are pure: their outputs depend only on their inputs, so a new sampler seed re-uses them.

Edit output size (docs/inference.md#output-size): with one reference the empty latent takes the resized reference's size;
with several it takes the node's width/height inputs (default 512x512, the CLI's --width/--height).
References enter the VLM and, VAE-encoded in raw latent space, the "reference_latents" of both
conditionings (the key core's ReferenceLatent node appends to).
"""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from ..deepgen_model.conditioning import encode as joint_encode, encode_steps
from ..deepgen_model.constants import (DEFAULT_SIZE, EDIT_NEGATIVE, MAX_REFERENCES, MAX_SIDE, REFERENCE_UNIT,
                                       SIZE_MULTIPLE, T2I_NEGATIVE)
from ..deepgen_model.errors import DeepGenInputError
from ..deepgen_model.images import output_size, reference_size
from ..deepgen_model.precision import nonfinite_cause
from ..deepgen_model.inputs import check_max_side
from .comfy_models import DeepGenSCB, DeepGenVLM, scb_module, vlm_parts_of
from .comfy_ops import compute_dtype
from .memory import memory_guard, unload


def _encode(vlm, scb, prompt: str, negative: str, images, max_side: int, after: int = 0):
    """Load VLM + SCB through ComfyUI's model management, encode, then move the VLM off the GPU.

    ComfyUI's progress bar moves through every stage: the loading, each ViT block, decoder layer and SCB
    layer, the unloading, then `after` steps the caller reports itself (one per reference it VAE-encodes).
    ComfyUI's interrupt is checked before every block and layer (and by every progress report); an
    out-of-memory error becomes a clear one (memory_guard); nothing else is caught."""
    model, tokenizer = vlm_parts_of(vlm)
    connector = scb_module(scb)
    steps = encode_steps(model, connector, len(images or ()))
    bar = comfy.utils.ProgressBar(1 + steps + 1 + after)
    with memory_guard("encoding the prompt with the VLM"):
        mm.load_models_gpu([vlm, scb], force_full_load=True)
        bar.update(1)
        try:
            cond = joint_encode(model, tokenizer, connector, prompt, negative, images, max_side,
                                layer_callback=mm.throw_exception_if_processing_interrupted,
                                progress=lambda done, _: bar.update_absolute(1 + done))
        finally:
            unload(vlm)  # the DiT needs the room more than the (3B) VLM does
        bar.update(1)
    if not (torch.isfinite(cond.seq).all() and torch.isfinite(cond.pooled).all()):
        weights = {"VLM": model.named_parameters(), "SCB": connector.named_parameters()}
        inputs = {f"image{i}": image for i, image in enumerate(images or [], 1)}
        raise DeepGenInputError(nonfinite_cause("encoding the prompt", inputs, weights, compute_dtype(vlm)) + ".")
    return cond, bar


def _conditioning(cond, extra: dict) -> tuple[list, list]:
    """Rows 0 / 1 of the joint encode -> ComfyUI [[seq [1,L,D], {pooled_output, deepgen_prompt, ...}]]."""
    dev = mm.intermediate_device()

    def entry(i):
        info = {"pooled_output": cond.pooled[i:i + 1].to(dev), "deepgen_prompt": cond.prompt_text[i]}
        info.update({k: list(v) if isinstance(v, list) else v for k, v in extra.items()})
        return [[cond.seq[i:i + 1].to(dev), info]]

    return entry(0), entry(1)  # separate lists: a node that mutates one branch must not change the other


def _ui(cond) -> dict:
    """Shown on the node by the web extension (and kept in /history): e.g. a prompt longer than trained on."""
    return {"deepgen_warnings": list(cond.warnings)}


_OUT_TIPS = {
    "positive": "Conditioning of the prompt (the DiT's context from VLM + SCB): the sampler's positive.",
    "negative": "Conditioning of the negative prompt, encoded together with the positive (same length): the "
                "sampler's negative.",
}


def _tooltip_prompt(kind: str) -> str:
    return f"The {kind} (plain text; the DeepGen template and special tokens are added by the node)."


class DeepGenTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenTextEncode",
            display_name="DeepGen Text Encode",
            category="DeepGen/conditioning",
            description="Text-to-image conditioning: prompt and negative prompt go through the VLM and the "
                        "SCB connector together (one batch, shared padding), exactly as the official pipeline.",
            inputs=[
                DeepGenVLM.Input("vlm", tooltip="The DeepGen VLM (DeepGen VLM Loader or DeepGen Checkpoint Loader)."),
                DeepGenSCB.Input("scb", tooltip="The DeepGen SCB connector (DeepGen SCB Loader or DeepGen Checkpoint Loader)."),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True, default="",
                                tooltip=_tooltip_prompt("prompt") + " 'Generate an image: ' is prepended."),
                io.String.Input("negative_prompt", multiline=True, dynamic_prompts=True, default=T2I_NEGATIVE,
                                tooltip=_tooltip_prompt("negative prompt") + " The authors use an empty one for text-to-image."),
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive", tooltip=_OUT_TIPS["positive"]),
                io.Conditioning.Output("negative", display_name="negative", tooltip=_OUT_TIPS["negative"]),
            ],
        )

    @classmethod
    def execute(cls, vlm, scb, prompt: str, negative_prompt: str) -> io.NodeOutput:
        cond, _ = _encode(vlm, scb, prompt, negative_prompt, None, DEFAULT_SIZE)
        return io.NodeOutput(*_conditioning(cond, {}), ui=_ui(cond))


def _references(images: dict) -> list[torch.Tensor]:
    refs = []
    for name, image in images.items():
        if image is None:
            continue
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or 0 in image.shape:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise DeepGenInputError(f"{name} is empty or not an IMAGE batch [B, H, W, C] (got {shape}).")
        if image.shape[0] != 1:
            raise DeepGenInputError(
                f"{name} holds {image.shape[0]} images; each reference input takes exactly one image "
                f"(use image1..image{MAX_REFERENCES} for several references, e.g. split the batch with 'Image From Batch').")
        refs.append(image[0])
    return refs


class DeepGenEditEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenEditEncode",
            display_name="DeepGen Edit Encode",
            category="DeepGen/conditioning",
            description="Editing conditioning from 1-4 reference images: resizes each by the official rule, feeds "
                        "them to the VLM (both branches) and VAE-encodes them as reference latents; also returns an "
                        "empty latent of the official output size.",
            inputs=[
                DeepGenVLM.Input("vlm", tooltip="The DeepGen VLM (DeepGen VLM Loader or DeepGen Checkpoint Loader)."),
                DeepGenSCB.Input("scb", tooltip="The DeepGen SCB connector (DeepGen SCB Loader or DeepGen Checkpoint Loader)."),
                io.Vae.Input("vae", tooltip="The SD3 VAE that encodes the references into reference latents."),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True, default="",
                                tooltip=_tooltip_prompt("edit instruction")),
                io.String.Input("negative_prompt", multiline=True, dynamic_prompts=True, default=EDIT_NEGATIVE,
                                tooltip=_tooltip_prompt("negative prompt") + " Default: the authors' evaluation negative."),
                io.Image.Input("image1", tooltip="First reference image (required)."),
                io.Int.Input("max_side", default=DEFAULT_SIZE, min=REFERENCE_UNIT, max=MAX_SIDE, step=REFERENCE_UNIT,
                             tooltip="Long side of the resized references (multiple of 32). Larger images are scaled "
                                     "down to it, smaller ones only rounded up to multiples of 32."),
                io.Int.Input("width", default=DEFAULT_SIZE, min=SIZE_MULTIPLE, max=MAX_SIDE, step=SIZE_MULTIPLE,
                             tooltip="Output width when SEVERAL references are given (multiple of 16). With one "
                                     "reference the output takes the resized reference's size."),
                io.Int.Input("height", default=DEFAULT_SIZE, min=SIZE_MULTIPLE, max=MAX_SIDE, step=SIZE_MULTIPLE,
                             tooltip="Output height when SEVERAL references are given (multiple of 16). With one "
                                     "reference the output takes the resized reference's size."),
                io.Image.Input("image2", optional=True, tooltip="Optional second reference image."),
                io.Image.Input("image3", optional=True, tooltip="Optional third reference image."),
                io.Image.Input("image4", optional=True, tooltip="Optional fourth reference image."),
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive", tooltip=_OUT_TIPS["positive"]),
                io.Conditioning.Output("negative", display_name="negative", tooltip=_OUT_TIPS["negative"]),
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="Empty SD3 latent of the output size (the resized image1 with one reference, "
                                         "else width x height): connect it to the sampler."),
            ],
        )

    @classmethod
    def execute(cls, vlm, scb, vae, prompt: str, negative_prompt: str, image1, max_side: int, width: int,
                height: int, image2=None, image3=None, image4=None) -> io.NodeOutput:
        check_max_side(max_side)
        refs = _references({"image1": image1, "image2": image2, "image3": image3, "image4": image4})
        out_w, out_h = output_size(width, height, [reference_size(r.shape[1], r.shape[0], max_side) for r in refs])

        cond, bar = _encode(vlm, scb, prompt, negative_prompt, refs, max_side, after=len(refs))
        # raw VAE latents of the pixels the VLM saw (resized once, by the encode), as core's ReferenceLatent stores them
        latents = []
        with memory_guard("encoding the reference images with the VAE"):
            for pixels in cond.reference_pixels:
                latents.append(vae.encode(torch.tensor(pixels, dtype=torch.float32)[None] / 255.0))
                bar.update(1)
        positive, negative = _conditioning(cond, {"reference_latents": latents})
        empty = torch.zeros([1, 16, out_h // 8, out_w // 8], device=mm.intermediate_device())
        return io.NodeOutput(positive, negative, {"samples": empty}, ui=_ui(cond))


NODES = [DeepGenTextEncode, DeepGenEditEncode]
