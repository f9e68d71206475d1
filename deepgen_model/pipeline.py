"""DeepGenPipeline: the whole DeepGen 1.0 inference (docs/inference.md#inference) as one object, without ComfyUI.

    pipe = DeepGenPipeline.from_pretrained("models/deepgen/DeepGen-1.0-diffusers")
    out = pipe("a red cat on a blue mat", seed=42)          # out.images: [1, 512, 512, 3] in 0..1
    out = pipe("make the cat blue", images=[photo])          # edit; photo: [H, W, 3] float 0..1
    cond = pipe.encode("a red cat")                          # run the VLM + SCB once ...
    out = pipe(conditioning=cond, seed=7, steps=30)          # ... and re-sample without them

Memory: offload="encoder" keeps the VLM and SCB on the CPU except while encoding (the DiT and VAE
get the accelerator); offload="all" also moves the DiT and VAE in only for their own stage.
dit_weights="fp8_e4m3fn" stores the DiT's Linear weights in fp8 (half of bf16), computed in bf16/fp32.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .conditioning import DeepGenConditioning, encode
from .constants import DEFAULT_CFG, DEFAULT_SIZE, DEFAULT_STEPS, EDIT_NEGATIVE, T2I_NEGATIVE, VAE_DOWNSCALE
from .errors import DeepGenInputError
from .images import output_size
from .loading import load_dit, load_scb, load_scheduler_config, load_vae
from .precision import FP8_DTYPES, apply_manual_cast, compute_dtype_of, resolve_dtypes, store_linear_weights
from .kinds import renamed_bases
from .release import COMPONENTS, Release
from .sampling import make_noise, sample
from .scheduler import latent_seq_len, sigmas_from_config
from .transformer import DeepGenTransformer
from .inputs import check_cfg, check_seed, check_steps
from .vae import decode, encode_reference
from .vlm_loading import load_vlm

log = logging.getLogger(__name__)


@dataclass
class DeepGenOutput:
    latents: torch.Tensor  # [B, 16, H/8, W/8] fp32, the DiT's normalised latent space
    images: torch.Tensor  # [B, H, W, 3] fp32 in 0..1 (ComfyUI IMAGE layout)
    conditioning: DeepGenConditioning
    seed: int
    steps: int
    cfg_scale: float


def _move(module: torch.nn.Module, device: torch.device) -> None:
    """Offloading moves a module, except a bitsandbytes-quantized VLM: its weights are quantized for the device
    it was loaded on and cannot move (transformers refuses .to()), so it is loaded on the execution device."""
    if not getattr(module, "is_quantized", False):
        module.to(device)


class DeepGenPipeline:
    """VLM + SCB connector -> DiT with reference latents -> VAE, with the official schedule and CFG."""

    OFFLOAD = ("none", "encoder", "all")
    # the components in the order they run (diffusers' name for it): offloading moves each in only for its stage,
    # "encoder" those that run before the DiT, "all" every one
    model_cpu_offload_seq = "vlm->scb->transformer->vae"

    def __init__(self, vlm, tokenizer, scb, dit, vae, scheduler_config: dict | None = None, *,
                 offload: str = "none", device=None, offload_device="cpu"):
        """offload: "none" (modules stay where they are), "encoder" (VLM + SCB wait on `offload_device`
        and visit `device` only to encode) or "all" (every component visits `device` only for its stage).
        device: where stages run when offloading (default: CUDA if available)."""
        if offload not in self.OFFLOAD:
            raise DeepGenInputError(f"offload must be one of {self.OFFLOAD}, got {offload!r}.")
        self.vlm, self.tokenizer, self.scb, self.vae = vlm, tokenizer, scb, vae
        self.transformer = dit if isinstance(dit, DeepGenTransformer) else DeepGenTransformer(dit)
        self.scheduler_config = dict(scheduler_config or {})
        self.offload, self.offload_device = offload, torch.device(offload_device)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")) if offload != "none" \
            else self.transformer.device
        self._ref_cache: tuple[list, object, list] | None = None  # (references, vae, latents) of the last call
        if offload != "none":
            for name in self.model_cpu_offload_seq.split("->"):
                _move(getattr(self, name), self.offload_device if name in self.offloaded(offload) else self.device)

    @property
    def bridge(self):
        """Deprecated spelling of `scb`."""
        warnings.warn("DeepGenPipeline.bridge is deprecated: use DeepGenPipeline.scb", DeprecationWarning, stacklevel=2)
        return self.scb

    @contextmanager
    def _resident(self, *modules):
        """Modules on the execution device for the block (offloading only); back to the offload device after."""
        if self.offload == "none":
            yield
            return
        for m in modules:
            _move(m, self.device)
        try:
            yield
        finally:
            for m in modules:
                _move(m, self.offload_device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @classmethod
    def offloaded(cls, offload: str) -> tuple[str, ...]:
        """The components (model_cpu_offload_seq's names) that wait on the offload device between their stages."""
        order = cls.model_cpu_offload_seq.split("->")
        return {"none": (), "encoder": tuple(order[:order.index("transformer")]), "all": tuple(order)}[offload]

    def _stage_modules(self, *names: str) -> tuple:
        """Modules that move for a stage: those of `names` that are offloaded."""
        return tuple(getattr(self, n) for n in names if n in self.offloaded(self.offload))

    @classmethod
    def from_pretrained(cls, path, vlm_base=None, dit_base=None, dtype=None, device=None,
                        attn_implementation: str = "sdpa", quantization: str | None = None,
                        offload: str = "none", dit_weights: str | None = None, *, vlm_path=None,
                        base_path=None) -> "DeepGenPipeline":
        """Load any release layout, auto-detected from `path`:

        - the diffusers release folder (DeepGen-1.0-diffusers);
        - the native `model.pt` (or its folder) with `vlm_base` = a Qwen2.5-VL-3B-Instruct folder and
          `dit_base` = a UniPic2-SD3.5M-Kontext-2B folder (its transformer/ is overridden by model.pt);
          `vlm_path` / `base_path` are their deprecated names;
        - a folder of files written by `python -m deepgen_model.convert`.

        dtype: None picks bf16 on CUDA; on a CPU it stores bf16 weights and computes each stage in
        precision.cpu_compute_dtype(stage) (fp32 without native bf16; with it, bf16 for the measured stages).
        quantization: None, "8bit" or "nf4" (VLM only, needs bitsandbytes).
        offload: see __init__ (components are loaded on the CPU, then placed).
        dit_weights: None, or "fp8_e4m3fn" / "fp8_e5m2" to store the DiT's Linear weights in fp8."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dit_weights is not None and dit_weights not in FP8_DTYPES:
            raise DeepGenInputError(f"dit_weights must be None or one of {list(FP8_DTYPES)}, got {dit_weights!r}.")
        storage, _ = resolve_dtypes(device, dtype)
        load_on = "cpu" if offload != "none" else device
        vlm_base, dit_base = renamed_bases(vlm_base, dit_base, vlm_path, base_path, "from_pretrained: ")
        release = Release.open(path, vlm_base=vlm_base, dit_base=dit_base).require(*COMPONENTS)
        vlm, tokenizer = load_vlm(release, dtype=storage, device=device if quantization else load_on,
                                  attn_implementation=attn_implementation,
                                  quantization=quantization)
        parts = [vlm, load_scb(release, dtype=storage, device=load_on),
                 load_dit(release, dtype=storage, device=load_on), load_vae(release, dtype=storage, device=load_on)]
        if dit_weights is not None:
            store_linear_weights(parts[2], dit_weights)
        computes = {}
        for stage, module in zip(("vlm", "scb", "dit", "vae"), parts):
            computes[stage] = compute = resolve_dtypes(device, dtype, stage)[1]
            if compute != storage or (stage == "dit" and dit_weights is not None):
                apply_manual_cast(module, compute)
        vlm, scb, dit, vae = parts
        log.info("DeepGen loaded from %s on %s (weights %s%s, compute %s, offload %s)", Path(path), device, storage,
                 f", DiT Linear {dit_weights}" if dit_weights else "",
                 ", ".join(f"{k} {str(v).removeprefix('torch.')}" for k, v in computes.items()), offload)
        return cls(vlm, tokenizer, scb, dit, vae, load_scheduler_config(release),
                   offload=offload, device=device)

    def encode(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
               images: Sequence[torch.Tensor] | None = None, max_side: int = DEFAULT_SIZE) -> DeepGenConditioning:
        """Run the VLM and the SCB once. images: reference images [H, W, 3] in 0..1 (editing).
        negative_prompt None -> the authors' default: "" for text-to-image, the long quality negative
        for edits (docs/inference.md#defaults)."""
        if negative_prompt is None:
            negative_prompt = T2I_NEGATIVE if images is None else EDIT_NEGATIVE
        with self._resident(*self._stage_modules("vlm", "scb")):
            cond = encode(self.vlm, self.tokenizer, self.scb, prompt, negative_prompt, images, max_side)
        if self.offload != "none":  # the conditioning must outlive the encoder's visit to the device
            cond.seq, cond.pooled = cond.seq.to(self.offload_device), cond.pooled.to(self.offload_device)
        return cond

    def sigmas(self, steps: int = DEFAULT_STEPS, width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE) -> torch.Tensor:
        """The official sigma list [steps + 1] for this release's scheduler config."""
        seq_len = latent_seq_len(height // VAE_DOWNSCALE, width // VAE_DOWNSCALE)
        return sigmas_from_config(self.scheduler_config, steps, image_seq_len=seq_len)

    def reference_latents(self, conditioning: DeepGenConditioning) -> list[torch.Tensor]:
        """VAE latents (posterior mean, normalised) of the resized references, for the DiT.

        The last result is kept: re-sampling a cached conditioning (new seed/steps/cfg) costs only
        the sampler, not another VAE encode of the same references."""
        refs = conditioning.references
        cache = self._ref_cache
        if cache and cache[1] is self.vae and len(cache[0]) == len(refs) and all(a is b for a, b in zip(cache[0], refs)):
            return list(cache[2])
        with self._resident(*self._stage_modules("vae")):
            latents = [encode_reference(self.vae, r) for r in refs]
        self._ref_cache = (list(refs), self.vae, latents)
        return list(latents)

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 images: Sequence[torch.Tensor] | None = None, width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE,
                 steps: int = DEFAULT_STEPS, cfg_scale: float = DEFAULT_CFG, seed: int = 0,
                 max_side: int = DEFAULT_SIZE, callback: Callable | None = None,
                 conditioning: DeepGenConditioning | None = None) -> DeepGenOutput:
        """Generate (images=None) or edit. With exactly one reference the output takes the resized
        reference's size and width/height are ignored (the official rule). Pass a `conditioning`
        from encode() instead of prompt/images to skip the VLM. callback(step, total, x, x0) runs
        after every step and may raise to cancel. steps, cfg_scale and seed are refused as the nodes
        refuse them (deepgen_model/validation.py), before anything runs."""
        check_steps(steps)
        check_cfg(cfg_scale, "cfg_scale")
        check_seed(seed)
        if conditioning is None:
            if prompt is None:
                raise DeepGenInputError("pass a prompt (or a conditioning from pipe.encode()).")
            conditioning = self.encode(prompt, negative_prompt, images, max_side)
        refs = self.reference_latents(conditioning)
        width, height = output_size(width, height, [(VAE_DOWNSCALE * r.shape[-1], VAE_DOWNSCALE * r.shape[-2])
                                                    for r in refs])
        noise = make_noise(seed, conditioning.batch_size, height, width)
        with self._resident(*self._stage_modules("transformer")):
            refs = [r.to(self.transformer.device) for r in refs]
            # inputs in the dtype the DiT computes in (fp32 for bf16/fp8 storage on a CPU), not its storage dtype
            latents = sample(self.transformer, noise, self.sigmas(steps, width, height), conditioning.positive(),
                             conditioning.negative(), cfg_scale, references=refs or None, callback=callback,
                             compute_dtype=compute_dtype_of(self.transformer))
        with self._resident(*self._stage_modules("vae")):
            images = decode(self.vae, latents)
        return DeepGenOutput(latents, images, conditioning, seed, steps, cfg_scale)
