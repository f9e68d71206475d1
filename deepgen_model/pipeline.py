"""DeepGenPipeline: the whole DeepGen 1.0 inference (spec §2) as one object, without ComfyUI.

    pipe = DeepGenPipeline.from_pretrained("models/deepgen/DeepGen-1.0-diffusers")
    out = pipe("a red cat on a blue mat", seed=42)          # out.images: [1, 512, 512, 3] in 0..1
    out = pipe("make the cat blue", images=[photo])          # edit; photo: [H, W, 3] float 0..1
    cond = pipe.encode("a red cat")                          # run the VLM + bridge once ...
    out = pipe(conditioning=cond, seed=7, steps=30)          # ... and re-sample without them
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .conditioning import DeepGenConditioning, encode
from .constants import DEFAULT_CFG, DEFAULT_SIZE, DEFAULT_STEPS, EDIT_NEGATIVE, SIZE_MULTIPLE, T2I_NEGATIVE
from .errors import DeepGenInputError
from .loading import load_bridge, load_dit, load_scheduler_config, load_vae, load_vlm
from .precision import apply_manual_cast, resolve_dtypes
from .sampling import make_noise, sample
from .scheduler import sigmas_from_config
from .transformer import DeepGenTransformer
from .vae import decode, encode_reference

log = logging.getLogger(__name__)


@dataclass
class DeepGenOutput:
    latents: torch.Tensor  # [B, 16, H/8, W/8] fp32, the DiT's normalised latent space
    images: torch.Tensor  # [B, H, W, 3] fp32 in 0..1 (ComfyUI IMAGE layout)
    conditioning: DeepGenConditioning
    seed: int
    steps: int
    cfg_scale: float


class DeepGenPipeline:
    """VLM + SCB bridge -> DiT with reference latents -> VAE, with the official schedule and CFG."""

    def __init__(self, vlm, tokenizer, bridge, dit, vae, scheduler_config: dict | None = None):
        self.vlm, self.tokenizer, self.bridge, self.vae = vlm, tokenizer, bridge, vae
        self.transformer = dit if isinstance(dit, DeepGenTransformer) else DeepGenTransformer(dit)
        self.scheduler_config = dict(scheduler_config or {})

    @classmethod
    def from_pretrained(cls, path, vlm_path=None, base_path=None, dtype=None, device=None,
                        attn_implementation: str = "sdpa", quantization: str | None = None) -> "DeepGenPipeline":
        """Load any release layout, auto-detected from `path`:

        - the diffusers release folder (DeepGen-1.0-diffusers);
        - the native `model.pt` (or its folder) with `vlm_path` = a Qwen2.5-VL-3B-Instruct folder and
          `base_path` = a UniPic2-SD3.5M-Kontext-2B folder (its transformer/ is overridden by model.pt);
        - a folder of files written by `python -m deepgen_model.convert`.

        dtype: None picks bf16 on CUDA, and on CPUs without native bf16 stores bf16 weights but
        computes in fp32 (about 7x faster there). quantization: None, "8bit" or "nf4" (VLM only,
        needs bitsandbytes)."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        storage, compute = resolve_dtypes(device, dtype)
        vlm, tokenizer = load_vlm(path, base_vlm_path=vlm_path, dtype=storage, device=device,
                                  attn_implementation=attn_implementation, quantization=quantization)
        parts = [vlm, load_bridge(path, dtype=storage, device=device),
                 load_dit(path, base_path=base_path, dtype=storage, device=device),
                 load_vae(path, base_path=base_path, dtype=storage, device=device)]
        if compute != storage:
            for module in parts:
                apply_manual_cast(module, compute)
        vlm, bridge, dit, vae = parts
        log.info("DeepGen loaded from %s on %s (weights %s, compute %s)", Path(path), device, storage, compute)
        return cls(vlm, tokenizer, bridge, dit, vae, load_scheduler_config(path, base_path=base_path))

    def encode(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
               images: Sequence[torch.Tensor] | None = None, max_side: int = DEFAULT_SIZE) -> DeepGenConditioning:
        """Run the VLM and the bridge once. images: reference images [H, W, 3] in 0..1 (editing).
        negative_prompt None -> the authors' default: "" for text-to-image, the long quality negative
        for edits (spec §4)."""
        if negative_prompt is None:
            negative_prompt = T2I_NEGATIVE if images is None else EDIT_NEGATIVE
        return encode(self.vlm, self.tokenizer, self.bridge, prompt, negative_prompt, images, max_side)

    def sigmas(self, steps: int = DEFAULT_STEPS, width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE) -> torch.Tensor:
        """The official sigma list [steps + 1] for this release's scheduler config."""
        return sigmas_from_config(self.scheduler_config, steps, image_seq_len=(height // 16) * (width // 16))

    def reference_latents(self, conditioning: DeepGenConditioning) -> list[torch.Tensor]:
        """VAE latents (posterior mean, normalised) of the resized references, for the DiT."""
        return [encode_reference(self.vae, r) for r in conditioning.references]

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 images: Sequence[torch.Tensor] | None = None, width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE,
                 steps: int = DEFAULT_STEPS, cfg_scale: float = DEFAULT_CFG, seed: int = 0,
                 max_side: int = DEFAULT_SIZE, callback: Callable | None = None,
                 conditioning: DeepGenConditioning | None = None) -> DeepGenOutput:
        """Generate (images=None) or edit. With exactly one reference the output takes the resized
        reference's size and width/height are ignored (the official rule). Pass a `conditioning`
        from encode() instead of prompt/images to skip the VLM. callback(step, total, x, x0) runs
        after every step and may raise to cancel."""
        if conditioning is None:
            if prompt is None:
                raise DeepGenInputError("pass a prompt (or a conditioning from pipe.encode()).")
            conditioning = self.encode(prompt, negative_prompt, images, max_side)
        refs = self.reference_latents(conditioning)
        if len(refs) == 1:
            height, width = (8 * s for s in refs[0].shape[-2:])
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE or width <= 0 or height <= 0:
            raise DeepGenInputError(f"width and height must be positive multiples of {SIZE_MULTIPLE}, got {width}x{height}.")
        noise = make_noise(seed, conditioning.batch_size, height, width)
        latents = sample(self.transformer, noise, self.sigmas(steps, width, height), conditioning.positive(),
                         conditioning.negative(), cfg_scale, references=refs or None, callback=callback)
        return DeepGenOutput(latents, decode(self.vae, latents), conditioning, seed, steps, cfg_scale)
