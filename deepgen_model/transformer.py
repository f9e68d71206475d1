"""DeepGen's Kontext-style DiT forward (docs/inference.md#dit) around a stock diffusers SD3Transformer2DModel.

DeepGen adds no weights to the SD3.5-Medium MMDiT; it only changes what goes in and out:
reference latents are patch-embedded with the *same* `pos_embed` (each with its own centred
crop of the sin-cos table, no offsets: docs/inference.md#pitfall-14) and appended after the target tokens; only
the target tokens are unpatchified. Every module and weight is diffusers' own, reached through
`self.dit`, so checkpoints keep diffusers key names.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .errors import DeepGenInputError
from .images import nearest_size


def latent_size_problem(h: int, w: int, patch: int, max_latent_side: int) -> str | None:
    """Why a DiT with this patch size and position table cannot take an h x w latent (None: it can): sides must
    be multiples of the patch and within the table. The one size rule of the engine and the nodes."""
    if h % patch or w % patch:  # in the artist's terms: pixels of the picture, not latent cells or patches
        return f"DeepGen needs both sides in steps of {8 * patch} px"
    if h > max_latent_side or w > max_latent_side:
        return f"DeepGen makes at most {8 * max_latent_side} px per side"
    return None


def nearest_latent_size(h: int, w: int, patch: int, max_latent_side: int) -> tuple[int, int]:
    """The (h, w) latent size nearest to h x w that latent_size_problem accepts (images.nearest_size)."""
    nw, nh = nearest_size(w, h, patch, max_latent_side)
    return nh, nw


def check_latent(z: torch.Tensor, what: str, channels: int, patch: int, max_latent_side: int) -> None:
    """Refuse, naming `what`, a latent [C, h, w] the DiT cannot take, offering the nearest size it can."""
    if z.ndim != 3 or z.shape[0] != channels:
        raise DeepGenInputError(f"{what} must have shape [{channels}, h, w], got {list(z.shape)}; pass VAE latents.")
    h, w = z.shape[-2:]
    if why := latent_size_problem(h, w, patch, max_latent_side):
        nh, nw = nearest_latent_size(h, w, patch, max_latent_side)
        raise DeepGenInputError(f"{what} is {h}x{w} (a {8 * w}x{8 * h} px picture), but {why}; the nearest "
                                f"size it can make is {8 * nw}x{8 * nh} px.")


def per_sample_references(references, batch: int) -> list[list[torch.Tensor]]:
    """None | shared list[Tensor] | per-sample list[list[Tensor]] -> one list of [C, h, w] per sample."""
    if references is None or len(references) == 0:
        return [[] for _ in range(batch)]
    if torch.is_tensor(references[0]):
        return [list(references) for _ in range(batch)]
    if len(references) != batch:
        raise DeepGenInputError(
            f"references has {len(references)} per-sample lists for a batch of {batch}; "
            "pass one list per sample, or one shared list of reference latents."
        )
    return [list(r) for r in references]


def reference_sequence(embed: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                       references: list[list[torch.Tensor]]) -> tuple[torch.Tensor, int]:
    """DeepGen's image token sequence (docs/inference.md#dit): each sample's target tokens, then the tokens of each of its
    references. `embed` patch-embeds a latent batch [B, C, h, w] and adds the centred crop of the position table
    for its own h x w, so a reference of the target's size gets exactly the target's positions (no offsets,
    docs/inference.md#pitfall-14). Returns ([B, N, D] tokens, the number of target tokens N_t; only those are unpatchified)."""
    target = embed(latents)
    cache: dict[int, torch.Tensor] = {}  # a reference shared by every sample is embedded once

    def embed_ref(r: torch.Tensor) -> torch.Tensor:
        if id(r) not in cache:
            cache[id(r)] = embed(r[None].to(device=latents.device, dtype=latents.dtype))[0]
        return cache[id(r)]

    sequences = [torch.cat([target[i]] + [embed_ref(r) for r in refs], dim=0) for i, refs in enumerate(references)]
    lengths = [s.shape[0] for s in sequences]
    if len(set(lengths)) != 1:
        raise DeepGenInputError(f"the samples' references differ in size (token counts {lengths}); give every "
                                "sample references of the same sizes, or sample them one at a time.")
    return torch.stack(sequences).contiguous(), target.shape[1]


class DeepGenTransformer(nn.Module):
    """Wraps (never copies) an SD3Transformer2DModel and runs DeepGen's reference-token forward with
    the model's own (stock diffusers) attention processors."""

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    @property
    def device(self) -> torch.device:
        return self.dit.device

    @property
    def max_latent_side(self) -> int:
        """Largest latent height/width the position table covers (768 for the release)."""
        return self.dit.pos_embed.pos_embed_max_size * self.dit.config.patch_size

    def size_problem(self, h: int, w: int) -> str | None:
        """Why the DiT cannot take an h x w latent (None: it can); see latent_size_problem."""
        return latent_size_problem(h, w, self.dit.config.patch_size, self.max_latent_side)

    def nearest_size(self, h: int, w: int) -> tuple[int, int]:
        """The (h, w) latent size nearest to h x w that size_problem accepts."""
        return nearest_latent_size(h, w, self.dit.config.patch_size, self.max_latent_side)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        seq: torch.Tensor,
        pooled: torch.Tensor,
        references: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Predict the flow-matching velocity of the target latents.

        latents: [B, C, h, w].
        timestep: scalar or [B], on the 0..1000 scale (sigma * 1000). Keep it fp32: the sinusoidal
            embedding upcasts it anyway, and bf16 would round e.g. 857.69 to 856.
        seq: [B, L, joint_attention_dim] context; pooled: [B, pooled_projection_dim].
        references: None; one list of [C, h_r, w_r] shared by every sample; or one list per sample
            (with the same total size in every sample). References are clean latents, cast to the
            latents' dtype.
        Returns the velocity [B, C, h, w].
        """
        dit = self.dit
        if not torch.is_tensor(latents) or latents.ndim != 4:
            shape = list(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
            raise DeepGenInputError(f"latents must be [B, C, h, w], got {shape}.")
        targets = list(latents.unbind(0))
        batch = len(targets)
        if batch == 0:
            raise DeepGenInputError("latents is empty; pass at least one latent.")
        for name, t in (("seq", seq), ("pooled", pooled)):
            if t.shape[0] != batch:
                raise DeepGenInputError(f"{name} has batch {t.shape[0]} but latents have batch {batch}.")
        refs = per_sample_references(references, batch)
        sizes = (dit.config.in_channels, dit.config.patch_size, self.max_latent_side)
        for i, z in enumerate(targets):
            check_latent(z, f"latent {i}", *sizes)
            for j, r in enumerate(refs[i]):
                check_latent(r, f"reference {j} of sample {i}", *sizes)
        hidden, n_target = reference_sequence(dit.pos_embed, latents, refs)

        timestep = torch.as_tensor(timestep, device=hidden.device)
        if not timestep.is_floating_point():
            timestep = timestep.float()
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        temb = dit.time_text_embed(timestep, pooled)
        context = dit.context_embedder(seq)
        for block in dit.transformer_blocks:
            context, hidden = block(
                hidden_states=hidden, encoder_hidden_states=context, temb=temb, joint_attention_kwargs=None
            )
        hidden = dit.proj_out(dit.norm_out(hidden, temb))

        p, c = dit.config.patch_size, dit.out_channels

        def unpatchify(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
            hh, ww = h // p, w // p
            x = tokens[..., :n_target, :].reshape(*tokens.shape[:-2], hh, ww, p, p, c)
            x = x.movedim(-1, -5).transpose(-3, -2)  # (.., c, hh, ww, p, q) -> (.., c, hh, p, ww, q)
            return x.reshape(*tokens.shape[:-2], c, h, w)

        return unpatchify(hidden, *latents.shape[-2:])
