"""DeepGen's Kontext-style DiT forward (spec §1.5) around a stock diffusers SD3Transformer2DModel.

DeepGen adds no weights to the SD3.5-Medium MMDiT; it only changes what goes in and out:
reference latents are patch-embedded with the *same* `pos_embed` (each with its own centred
crop of the sin-cos table, no offsets: pitfall 14) and appended after the target tokens; only
the target tokens are unpatchified. Every module and weight is diffusers' own, reached through
`self.dit`, so checkpoints keep diffusers key names.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeepGenInputError


class MaskedJointAttnProcessor:
    """diffusers' JointAttnProcessor2_0 math (qk RMSNorm, joint [image, context] SDPA) plus a mask.

    `attention_mask` is None (no mask: the fast SDPA path, used whenever all samples have the
    same number of image tokens) or a bool [B, L_img] marking real image tokens of a right-padded
    ragged batch. Context tokens are always real. The pairwise mask is m_i AND m_j with the
    diagonal forced True, so real tokens never see padding and padding rows attend only to
    themselves (no all-masked rows, hence no NaN). The same processor serves the image-only attn2.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch, n_img = hidden_states.shape[:2]

        def heads(x):
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if encoder_hidden_states is not None:
            cq = heads(attn.add_q_proj(encoder_hidden_states))
            ck = heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)

        mask = None
        if attention_mask is not None:
            m = attention_mask.to(device=q.device, dtype=torch.bool)
            if encoder_hidden_states is not None:
                m = torch.cat([m, m.new_ones(batch, encoder_hidden_states.shape[1])], dim=1)
            mask = m[:, None, :, None] & m[:, None, None, :]
            mask = mask | torch.eye(m.shape[1], dtype=torch.bool, device=m.device)

        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(q.dtype)

        context = None
        if encoder_hidden_states is not None:
            out, context = out[:, :n_img], out[:, n_img:]
            if not attn.context_pre_only:
                context = attn.to_add_out(context)
        out = attn.to_out[1](attn.to_out[0](out))
        return out if encoder_hidden_states is None else (out, context)


class DeepGenTransformer(nn.Module):
    """Wraps (never copies) an SD3Transformer2DModel and runs DeepGen's reference-token forward.

    Construction installs `MaskedJointAttnProcessor` on every block's attn/attn2 of the wrapped
    model (without a mask it computes exactly what diffusers' stock processor does).
    """

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit
        processor = MaskedJointAttnProcessor()
        for block in dit.transformer_blocks:
            block.attn.set_processor(processor)
            if getattr(block, "attn2", None) is not None:
                block.attn2.set_processor(processor)

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

    def _check_latent(self, z: torch.Tensor, what: str) -> None:
        cfg = self.dit.config
        if z.ndim != 3 or z.shape[0] != cfg.in_channels:
            raise DeepGenInputError(
                f"{what} must have shape [{cfg.in_channels}, h, w], got {list(z.shape)}; pass VAE latents."
            )
        h, w = z.shape[-2:]
        p, limit = cfg.patch_size, self.max_latent_side
        if h % p or w % p:
            raise DeepGenInputError(
                f"{what} is {h}x{w}: latent sides must be multiples of {p} (image sides multiples of {8 * p} px)."
            )
        if h > limit or w > limit:
            raise DeepGenInputError(
                f"{what} is {h}x{w} (about {8 * w}x{8 * h} px) but the DiT position table "
                f"(pos_embed_max_size {limit // p}) allows latent sides <= {limit}, "
                f"i.e. image sides <= {8 * limit} px; "
                "use a smaller width/height or reference size."
            )

    @staticmethod
    def _per_sample_refs(references, batch: int) -> list[list[torch.Tensor]]:
        """None | shared list[Tensor] | per-sample list[list[Tensor]] -> per-sample lists."""
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

    def forward(
        self,
        latents: torch.Tensor | Sequence[torch.Tensor],
        timestep: torch.Tensor | float,
        seq: torch.Tensor,
        pooled: torch.Tensor,
        references: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Predict the flow-matching velocity of the target latents.

        latents: [B, C, h, w] tensor, or a list of [C, h_i, w_i] (sizes may differ: ragged batch).
        timestep: scalar or [B], on the 0..1000 scale (sigma * 1000). Keep it fp32: the sinusoidal
            embedding upcasts it anyway, and bf16 would round e.g. 857.69 to 856.
        seq: [B, L, joint_attention_dim] context; pooled: [B, pooled_projection_dim].
        references: None; one list of [C, h_r, w_r] shared by every sample; or one list per sample
            (counts and sizes may differ). References are clean latents, cast to the latents' dtype.
        Returns the velocity with the structure of `latents` (tensor or list).
        """
        dit = self.dit
        batched = torch.is_tensor(latents)
        if batched and latents.ndim != 4:
            raise DeepGenInputError(f"latents must be [B, C, h, w] or a list of [C, h, w], got {list(latents.shape)}.")
        targets = list(latents.unbind(0)) if batched else list(latents)
        batch = len(targets)
        if batch == 0:
            raise DeepGenInputError("latents is empty; pass at least one latent.")
        for name, t in (("seq", seq), ("pooled", pooled)):
            if t.shape[0] != batch:
                raise DeepGenInputError(f"{name} has batch {t.shape[0]} but latents have batch {batch}.")
        refs = self._per_sample_refs(references, batch)
        for i, z in enumerate(targets):
            self._check_latent(z, f"latent {i}")
            for j, r in enumerate(refs[i]):
                self._check_latent(r, f"reference {j} of sample {i}")

        # Patch embedding: target first, then each reference with its own centred crop.
        target_tokens = dit.pos_embed(latents) if batched else None
        cache: dict[int, torch.Tensor] = {}  # shared references are embedded once

        def embed(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            if id(r) not in cache:
                cache[id(r)] = dit.pos_embed(r[None].to(device=like.device, dtype=like.dtype))[0]
            return cache[id(r)]

        sequences = []
        for i, z in enumerate(targets):
            tok = target_tokens[i] if batched else dit.pos_embed(z[None])[0]
            sequences.append(torch.cat([tok] + [embed(r, z) for r in refs[i]], dim=0))
        lengths = [s.shape[0] for s in sequences]
        mask = None
        if len(set(lengths)) == 1:
            hidden = torch.stack(sequences)
        else:  # ragged: right-pad with zeros and mask the padding out of attention
            hidden = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)
            mask = torch.arange(hidden.shape[1], device=hidden.device)[None] < torch.tensor(
                lengths, device=hidden.device
            )[:, None]
        hidden = hidden.contiguous()

        timestep = torch.as_tensor(timestep, device=hidden.device)
        if not timestep.is_floating_point():
            timestep = timestep.float()
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        temb = dit.time_text_embed(timestep, pooled)
        context = dit.context_embedder(seq)
        kwargs = None if mask is None else {"attention_mask": mask}
        for block in dit.transformer_blocks:
            context, hidden = block(
                hidden_states=hidden, encoder_hidden_states=context, temb=temb, joint_attention_kwargs=kwargs
            )
        hidden = dit.proj_out(dit.norm_out(hidden, temb))

        p, c = dit.config.patch_size, dit.out_channels

        def unpatchify(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
            hh, ww = h // p, w // p
            x = tokens[..., : hh * ww, :].reshape(*tokens.shape[:-2], hh, ww, p, p, c)
            x = x.movedim(-1, -5).transpose(-3, -2)  # (.., c, hh, ww, p, q) -> (.., c, hh, p, ww, q)
            return x.reshape(*tokens.shape[:-2], c, h, w)

        if batched:
            return unpatchify(hidden, *latents.shape[-2:])
        return [unpatchify(hidden[i], *z.shape[-2:]) for i, z in enumerate(targets)]
