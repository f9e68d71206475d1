"""A plain, independent implementation of the official DeepGen `generate()` flow (docs/inference.md#inference).

It is the baseline that benchmarks compare the pack against, and an oracle for the engine's
fidelity tests. It deliberately shares no code with `deepgen_model`: stock transformers / diffusers
modules loaded from the diffusers release folder, the official strings written out literally, the
connector written from its state dict, diffusers' own FlowMatchEulerDiscreteScheduler, and
everything resident. Two choices follow the engine's documented ones (not the official code) so
that outputs are comparable: fp32 CPU noise from a seeded generator, and the VAE posterior mean
for reference latents.

FlashAttention-2 semantics (the official VLM backend) are reproduced without hooks: every prompt
row runs UNPADDED (so real tokens see exactly what FA2 varlen shows them), and the left-pad rows,
whose FA2 attention output is exactly zero, are advanced through the MLPs alone.
"""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SELECTED = (35, 29, 23, 17, 11, 5)
THINK_TOKENS = 128
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])


def _t2i(text: str) -> str:
    return f"<|im_start|>user\nGenerate an image: {text}<|im_end|>\n<|im_start|>assistant\n"


def _edit(text: str, token_counts: list[int]) -> str:
    blocks = "".join("<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>" for n in token_counts)
    return f"<|im_start|>user\n{blocks}\n{text}<|im_end|>\n<|im_start|>assistant\n"


class ReferenceDeepGen:
    """Loads the diffusers release folder with stock classes; `generate(...)` is the official loop."""

    def __init__(self, release: str | Path, device="cpu", dtype=torch.float32):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        root = Path(release)
        self.device, self.dtype = torch.device(device), dtype
        self.tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        self.vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            root / "vlm", torch_dtype=dtype, attn_implementation="sdpa").to(device).eval()
        self.dit = SD3Transformer2DModel.from_pretrained(root / "transformer", torch_dtype=dtype).to(device).eval()
        self.vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=dtype).to(device).eval()
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler")
        self.connector = {k: v.to(device, dtype) for k, v in load_file(root / "connector" / "model.safetensors").items()}
        cfg_file = root / "connector" / "config.json"
        self.heads = json.loads(cfg_file.read_text())["num_attention_heads"] if cfg_file.is_file() else 32

    @classmethod
    def from_modules(cls, vlm, tokenizer, connector_state: dict, heads: int, dit, vae, scheduler_config: dict,
                     device="cpu", dtype=torch.float32) -> "ReferenceDeepGen":
        """The same loop over modules that are already built (benchmarks: the pack's own weights, so
        both run on identical tensors without a second copy). `dtype` is the activation dtype: with
        weights stored smaller and cast per call (the pack's manual cast) pass the compute dtype.
        The connector tensors stay as stored; each matmul casts them to the activation dtype."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        self = cls.__new__(cls)
        self.device, self.dtype = torch.device(device), dtype
        self.tokenizer, self.vlm, self.dit, self.vae = tokenizer, vlm, dit, vae
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        self.connector, self.heads = dict(connector_state), heads
        return self

    # ---------------------------------------------------------------- VLM
    def _parts(self):
        return self.vlm.model.visual, self.vlm.model.language_model

    def _positions(self, ids: torch.Tensor, grid) -> torch.Tensor:
        fn = self.vlm.model.get_rope_index
        mask = torch.ones_like(ids)
        if "mm_token_type_ids" in inspect.signature(fn).parameters:  # transformers 5.x
            types = (ids == self.vlm.config.image_token_id).int()
            return fn(ids, types, image_grid_thw=grid, attention_mask=mask)[0]
        return fn(input_ids=ids, image_grid_thw=grid, video_grid_thw=None, second_per_grid_ts=None,
                  attention_mask=mask)[0]

    def _vit(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[3, H, W] in [-1, 1] (multiples of 32) -> merged ViT tokens, grid."""
        x = F.interpolate(pixels[None].float(), scale_factor=28 / 32, mode="bilinear")[0]
        x = ((x + 1) / 2 - MEAN[:, None, None]) / STD[:, None, None]
        c, h, w = x.shape
        gh, gw = h // 14, w // 14
        x = x[None].expand(2, c, h, w).reshape(2, c, gh // 2, 2, 14, gw // 2, 2, 14)
        patches = x.permute(2, 5, 3, 6, 1, 0, 4, 7).reshape(gh * gw, c * 2 * 14 * 14)  # (h,w,hh,ww) x (c,t,py,px)
        grid = torch.tensor([[1, gh, gw]])
        out = self._parts()[0](patches.to(self.device, self.dtype), grid_thw=grid.to(self.device))
        return getattr(out, "pooler_output", out), grid

    def _row_states(self, text: str, vit_tokens, grids) -> list[torch.Tensor]:
        """Selected residual streams of one UNPADDED row: [T+128, H] each."""
        _, lm = self._parts()
        ids = self.tokenizer(text, return_tensors="pt").input_ids
        ids = torch.cat([ids, torch.zeros(1, THINK_TOKENS, dtype=ids.dtype)], 1).to(self.device)
        embeds = lm.get_input_embeddings()(ids[:, :-THINK_TOKENS])
        if vit_tokens is not None:
            where = ids[0, :-THINK_TOKENS] == self.vlm.config.image_token_id
            embeds[0, where] = torch.cat(vit_tokens).to(embeds.dtype)
        embeds = torch.cat([embeds, self.connector["meta_queries"][None].to(embeds.dtype)], 1)
        grid = torch.cat(grids).to(self.device) if grids else None
        out = lm(inputs_embeds=embeds, position_ids=self._positions(ids, grid), output_hidden_states=True)
        return [out.hidden_states[i][0] for i in SELECTED]

    def _pad_states(self, n_pad: int) -> list[torch.Tensor]:
        """Pad rows under FA2: zero attention output, so h <- h + mlp(post_attention_layernorm(h))."""
        _, lm = self._parts()
        pad_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        h = lm.get_input_embeddings()(torch.tensor([pad_id] * n_pad, device=self.device))
        states = {}
        for k, layer in enumerate(lm.layers[: max(SELECTED)], start=1):
            h = h + layer.mlp(layer.post_attention_layernorm(h))
            states[k] = h
        return [states[i] for i in SELECTED]

    def _stacked(self, texts: list[str], vit_tokens, grids) -> torch.Tensor:
        rows = [self._row_states(t, vit_tokens, grids) for t in texts]
        length = max(r[0].shape[0] for r in rows)
        out = []
        for r in rows:
            n_pad = length - r[0].shape[0]
            pads = self._pad_states(n_pad) if n_pad else None
            layers = [torch.cat([p, s]) if pads else s for p, s in zip(pads or [None] * 6, r)]
            out.append(torch.cat(layers, dim=-1))
        return torch.stack(out)

    # ---------------------------------------------------------------- SCB
    def _scb(self, x: torch.Tensor):
        c, heads = self.connector, self.heads
        lin = lambda x, name: F.linear(x, c[f"{name}.weight"].to(x.dtype), c[f"{name}.bias"].to(x.dtype))  # noqa: E731
        x = lin(x.to(self.dtype), "projector_1")
        layers = sorted({int(k.split(".")[2]) for k in c if k.startswith("connector.layers.")})
        for i in layers:
            p = f"connector.layers.{i}"
            h = F.layer_norm(x, x.shape[-1:], c[f"{p}.layer_norm1.weight"].to(x.dtype),
                             c[f"{p}.layer_norm1.bias"].to(x.dtype), 1e-6)
            b, n, d = h.shape
            q, k, v = (lin(h, f"{p}.self_attn.{m}_proj").view(b, n, heads, d // heads).transpose(1, 2) for m in "qkv")
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
            x = x + lin((att @ v).transpose(1, 2).reshape(b, n, d), f"{p}.self_attn.out_proj")
            h = F.layer_norm(x, x.shape[-1:], c[f"{p}.layer_norm2.weight"].to(x.dtype),
                             c[f"{p}.layer_norm2.bias"].to(x.dtype), 1e-6)
            x = x + lin(F.gelu(lin(h, f"{p}.mlp.fc1"), approximate="tanh"), f"{p}.mlp.fc2")
        return lin(x, "projector_3"), lin(x.mean(1), "projector_2")

    # ---------------------------------------------------------------- DiT (UniPic2 token order: [refs, target])
    def _velocity(self, x, t, seq, pooled, refs):
        d = self.dit
        if not refs:
            return d(hidden_states=x, encoder_hidden_states=seq, pooled_projections=pooled, timestep=t).sample
        h, w = x.shape[-2:]
        ref_tokens = [d.pos_embed(r[None].expand(x.shape[0], -1, -1, -1).to(x.dtype)) for r in refs]
        hidden = torch.cat(ref_tokens + [d.pos_embed(x)], dim=1)
        temb = d.time_text_embed(t, pooled)
        context = d.context_embedder(seq)
        for block in d.transformer_blocks:
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
        n = (h // 2) * (w // 2)
        out = d.proj_out(d.norm_out(hidden[:, -n:], temb))
        out = out.view(x.shape[0], h // 2, w // 2, 2, 2, -1)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(x.shape[0], -1, h, w)

    # ---------------------------------------------------------------- the loop
    @staticmethod
    def resize(image: torch.Tensor, max_side: int) -> np.ndarray:
        """The CLI rule: long side -> max_side (short side ceil'd to 32), smaller images rounded up."""
        arr = np.clip(image.numpy() * 255 + 0.5, 0, 255).astype(np.uint8)
        pil = Image.fromarray(arr)
        w, h = pil.size
        if max(w, h) >= max_side:
            s = max_side / max(w, h)
            w, h = (max_side, math.ceil(h * s / 32) * 32) if w >= h else (math.ceil(w * s / 32) * 32, max_side)
        else:
            w, h = math.ceil(w / 32) * 32, math.ceil(h / 32) * 32
        return np.asarray(pil.resize((w, h)))

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        """The official loop; a DiT shared with the pack runs with diffusers' stock attention processor
        for the duration (the pack installs its own on the modules it wraps)."""
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        saved = self.dit.attn_processors
        self.dit.set_attn_processor(JointAttnProcessor2_0())
        try:
            return self._generate(*args, **kwargs)
        finally:
            self.dit.set_attn_processor(saved)

    def _generate(self, prompt: str, negative: str = "", images=None, width=512, height=512, steps=50,
                 cfg=4.0, seed=0, max_side=512):
        refs, vit_tokens, grids = [], None, []
        if images:
            resized = [self.resize(im, max_side) for im in images]
            pixels = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 * 2 - 1 for a in resized]
            vit = [self._vit(p) for p in pixels]
            vit_tokens, grids = [v[0] for v in vit], [v[1] for v in vit]
            texts = [_edit(prompt, [len(v) for v in vit_tokens]), _edit(negative, [len(v) for v in vit_tokens])]
            sf, sh = self.vae.config.scaling_factor, self.vae.config.shift_factor
            refs = [(self.vae.encode(p[None].to(self.device, self.dtype)).latent_dist.mean[0] - sh) * sf for p in pixels]
            if len(refs) == 1:
                height, width = pixels[0].shape[-2:]
        else:
            texts = [_t2i(prompt), _t2i(negative)]
        seq, pooled = self._scb(self._stacked(texts, vit_tokens, grids))
        gen = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((1, 16, height // 8, width // 8), generator=gen).to(self.device, self.dtype)
        self.scheduler.set_timesteps(steps, device=self.device)
        for t in self.scheduler.timesteps:
            if cfg > 1:
                v_u, v_c = self._velocity(torch.cat([latents] * 2), t.expand(2), seq.flip(0), pooled.flip(0), refs).chunk(2)
                v = v_u + cfg * (v_c - v_u)
            else:
                v = self._velocity(latents, t.expand(1), seq[:1], pooled[:1], refs)
            latents = self.scheduler.step(v, t, latents).prev_sample
        x = self.vae.decode(latents / self.vae.config.scaling_factor + self.vae.config.shift_factor).sample
        return latents, ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
