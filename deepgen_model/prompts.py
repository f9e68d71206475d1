"""Prompt strings and tokenisation of DeepGen 1.0 (docs/inference.md#prompts, #pitfall-1, #pitfall-4, #pitfall-5).

No system prompt and no chat template: the strings are built by hand exactly as the release does.
"""
from __future__ import annotations

import torch

from .constants import GENERATION_TEMPLATE, IMAGE_BLOCK, IMAGE_PAD_TOKEN, INSTRUCTION_TEMPLATE, PAD_TOKEN
from .errors import DeepGenInputError, DeepGenLoadError


def t2i_prompt(text: str) -> str:
    """Text-to-image string: the "Generate an image: " prefix inside the user turn."""
    return INSTRUCTION_TEMPLATE.format(input=GENERATION_TEMPLATE.format(input=text))


def edit_prompt(text: str, image_token_counts: list[int]) -> str:
    """Edit string: one image block per reference (nothing between them), a newline, the instruction.

    No generation prefix. The negative branch of an edit uses this too, with the same counts."""
    if not image_token_counts:
        raise DeepGenInputError("edit_prompt needs at least one reference image (image_token_counts is empty).")
    blocks = "".join(IMAGE_BLOCK.format(pads=IMAGE_PAD_TOKEN * int(n)) for n in image_token_counts)
    return INSTRUCTION_TEMPLATE.format(input=f"{blocks}\n{text}")


def pad_token_id(tokenizer) -> int:
    """Id of `<|endoftext|>` in this tokenizer (151643 for Qwen; tiny test tokenizers differ)."""
    tid = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    if tid is None or tokenizer.convert_ids_to_tokens(tid) != PAD_TOKEN:
        raise DeepGenLoadError(f"tokenizer has no {PAD_TOKEN} token; load the Qwen2.5-VL tokenizer of the release.")
    return int(tid)


def tokenize_pair(tokenizer, positives: list[str], negatives: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise [pos_1..pos_b, neg_1..neg_b] in one call, left-padded with `<|endoftext|>`.

    Returns (input_ids [2b, T] long, attention_mask [2b, T] bool). Rows are padded by hand (same
    result as the release's `padding_side='left'`), which keeps transformers 4.x and 5.x identical
    and pads with `<|endoftext|>` whatever pad token the tokenizer was saved with. No truncation."""
    if not positives or len(positives) != len(negatives):
        raise DeepGenInputError(
            f"need as many negative prompts as prompts (got {len(positives)} prompts, {len(negatives)} negatives)."
        )
    pad = pad_token_id(tokenizer)
    rows = tokenizer(list(positives) + list(negatives), add_special_tokens=True, padding=False, truncation=False)[
        "input_ids"
    ]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = True
    return ids, mask
