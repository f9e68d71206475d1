"""One Qwen2.5-VL text forward -> stacked hidden states for the SCB connector
(docs/inference.md#layer-selection, #vlm-forward, #pitfall-1, #pitfall-2, #pitfall-6, #pitfall-7).

The stock text model runs unmodified; hooks (always removed again) do three things:
* record the residual stream after the selected decoder layers (35, 29, 23, 17, 11, 5 at depth 36),
* stop the forward right after the deepest of them (layer 36 and the final norm are never used),
* emulate FlashAttention-2 varlen, the official backend: a pad query's attention output is exactly 0
  (o_proj has no bias, so zeroing its input zeroes the attention branch), whatever backend runs.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .compat import rope_index, visual_embeds, vlm_parts
from .constants import IMAGE_PAD_TOKEN, selected_layers
from .errors import DeepGenInputError, DeepGenLoadError


class _StopForward(Exception):
    """Raised by the hook of the deepest selected layer; never leaves this module."""


def _image_token_id(vlm, tokenizer) -> int:
    tid = tokenizer.convert_tokens_to_ids(IMAGE_PAD_TOKEN)
    cfg_id = getattr(vlm.config, "image_token_id", tid)
    if tid is None or tid != cfg_id:
        raise DeepGenLoadError(
            f"tokenizer id of {IMAGE_PAD_TOKEN} ({tid}) differs from the VLM config's image_token_id ({cfg_id}); "
            "use the tokenizer shipped with the VLM."
        )
    return int(tid)


def _image_embeddings(visual, pixel_values, grid_thw: torch.Tensor, layer_callback=None, progress=None) -> torch.Tensor:
    """ViT tokens of every image occurrence, concatenated in row-major (batch, sequence) order.

    Each image runs through the ViT alone, as the release does. The same tensor object passed twice
    (positive and negative rows) is encoded once."""
    counts = [int(t * h * w) for t, h, w in grid_thw.tolist()]
    if isinstance(pixel_values, torch.Tensor):
        pixel_values = list(pixel_values.split(counts))
    if len(pixel_values) != len(counts) or any(p.shape[0] != n for p, n in zip(pixel_values, counts)):
        raise DeepGenInputError("pixel_values do not match grid_thw (one [t*h*w, 1176] block per image expected).")
    device = next(visual.parameters()).device
    cache: dict[int, torch.Tensor] = {}
    out = []
    for pv, grid in zip(pixel_values, grid_thw):
        if id(pv) not in cache:  # the ViT's patch embedding casts pv to its own weight dtype
            with calling_per_layer(getattr(visual, "blocks", ()), layer_callback, progress):
                cache[id(pv)] = visual_embeds(visual, pv.to(device), grid[None].to(device))
        out.append(cache[id(pv)])
    return torch.cat(out)


def stacked_hidden_states(vlm, tokenizer, meta_queries: torch.Tensor, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor, pixel_values=None, grid_thw=None,
                          layer_callback=None, progress=None) -> torch.Tensor:
    """[B, T] prompt ids/mask (+ images) -> stacked residual streams [B, T+Q, 6*H], deepest layer first.

    pixel_values: None, a [sum N_i, 1176] tensor, or a list with one [N_i, 1176] tensor per image
    occurrence in row-major order (positive rows first, then the same images for the negative rows);
    grid_thw: [n_occurrences, 3]. meta_queries [Q, H] are appended as embeddings (never as ids).
    layer_callback: called with no arguments before every ViT block and decoder layer; whatever it
    raises (e.g. ComfyUI's interrupt) ends the forward there. progress: called with no arguments after
    every ViT block and decoder layer that runs (progress_steps counts them), for progress bars."""
    visual, text_model = vlm_parts(vlm)
    embed = text_model.get_input_embeddings()
    device = embed.weight.device
    ids = input_ids.to(device)
    mask = attention_mask.to(device=device, dtype=torch.bool)
    b, q = ids.shape[0], meta_queries.shape[0]
    image_id = _image_token_id(vlm, tokenizer)
    is_image = ids == image_id

    with torch.no_grad():
        embeds = embed(ids)  # pads get the real <|endoftext|> embedding (docs/inference.md#pitfall-1)
        dtype = embeds.dtype
        if pixel_values is None:
            if is_image.any():
                raise DeepGenInputError("prompt contains image tokens but no pixel_values were given.")
            grid = None
        else:
            grid = torch.as_tensor(grid_thw, dtype=torch.long).reshape(-1, 3)
            image = _image_embeddings(visual, pixel_values, grid, layer_callback, progress).to(device, dtype)
            if image.shape[0] != int(is_image.sum()):
                raise DeepGenInputError(
                    f"{int(is_image.sum())} {IMAGE_PAD_TOKEN} tokens in the prompts but {image.shape[0]} image "
                    "embeddings; build the prompts with image_token_count() of each resized reference."
                )
            embeds = embeds.masked_scatter(is_image[..., None], image)  # row-major (batch, sequence) order
            grid = grid.to(device)
        # think tokens: id 0 is only a placeholder for the position computation (docs/inference.md#pitfall-6)
        ext_ids = torch.cat([ids, ids.new_zeros(b, q)], dim=1)
        ext_mask = torch.cat([mask, mask.new_ones(b, q)], dim=1)
        positions = rope_index(vlm, ext_ids, grid, ext_mask, image_id)
        inputs = torch.cat([embeds, meta_queries.to(device, dtype)[None].expand(b, q, -1)], dim=1)
        return _run_selected(text_model, inputs, ext_mask, positions, layer_callback, progress)


@contextmanager
def fa2_pad_emulation(text_model, attention_mask: torch.Tensor):
    """While active, pad query rows (mask False) of every decoder layer get a zero attention output.

    FlashAttention-2 varlen (the official backend) never computes pad queries; SDPA/eager with a
    4-D mask give them something backend-dependent (docs/inference.md#pitfall-2). o_proj has no bias, so zeroing its
    input rows zeroes the whole attention branch; torch.where also clears NaNs of empty softmax rows."""
    keep = attention_mask.to(torch.bool)[..., None]

    def zero_pad_queries(module, args):
        x = args[0]
        if x.shape[:2] != keep.shape[:2]:
            raise RuntimeError(f"o_proj input {tuple(x.shape)} does not match the attention mask {tuple(keep.shape)}")
        return (torch.where(keep.to(x.device), x, torch.zeros((), dtype=x.dtype, device=x.device)), *args[1:])

    handles = [layer.self_attn.o_proj.register_forward_pre_hook(zero_pad_queries) for layer in text_model.layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def calling_per_layer(layers, before=None, after=None):
    """While active, `before()` runs before each of `layers` (an interruption point per layer) and `after()`
    after each (a progress step)."""
    handles = [] if before is None else [m.register_forward_pre_hook(lambda *_: before()) for m in layers]
    handles += [] if after is None else [m.register_forward_hook(lambda *_: after()) for m in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def progress_steps(vlm, references: int) -> int:
    """How many progress steps stacked_hidden_states reports: the ViT blocks of each reference (each runs
    once, shared by both branches) and the decoder layers up to the deepest one the SCB reads."""
    visual, text_model = vlm_parts(vlm)
    return references * len(getattr(visual, "blocks", ())) + max(selected_layers(len(text_model.layers)))


def _run_selected(text_model, inputs_embeds, mask, position_ids, layer_callback=None, progress=None) -> torch.Tensor:
    layers = text_model.layers
    chosen = selected_layers(len(layers))  # hidden-state indices: index k = output of layers[k-1]
    deepest = max(chosen)
    captured: dict[int, torch.Tensor] = {}

    def recorder(k):
        def hook(module, args, output):
            if k in chosen:
                captured[k] = output[0] if isinstance(output, (tuple, list)) else output  # tuple in 4.x, tensor in 5.x
            if progress is not None:
                progress()
            if k == deepest:
                raise _StopForward
        return hook

    watched = range(1, deepest + 1) if progress is not None else chosen
    handles = [layers[k - 1].register_forward_hook(recorder(k)) for k in watched]
    try:
        with fa2_pad_emulation(text_model, mask), calling_per_layer(layers, layer_callback):
            text_model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if len(captured) != len(chosen):
        raise RuntimeError("the text model did not run all selected decoder layers")
    return torch.cat([captured[k] for k in chosen], dim=-1)
