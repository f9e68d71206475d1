"""Prompt strings and pos/neg tokenisation (docs/inference.md#prompts, #pitfall-1, #pitfall-4, #pitfall-5)."""
import pytest
import torch

from deepgen_model.errors import DeepGenInputError
from deepgen_model.prompts import edit_prompt, pad_token_id, t2i_prompt, tokenize_pair


def test_t2i_strings_are_exact():
    assert t2i_prompt("a red cat") == (
        "<|im_start|>user\nGenerate an image: a red cat<|im_end|>\n<|im_start|>assistant\n")
    # the official empty negative keeps the space after the colon
    assert t2i_prompt("") == "<|im_start|>user\nGenerate an image: <|im_end|>\n<|im_start|>assistant\n"
    assert "system" not in t2i_prompt("x") and "helpful assistant" not in t2i_prompt("x")


def test_edit_strings_are_exact():
    assert edit_prompt("make it blue", [2, 1]) == (
        "<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>"
        "<|vision_start|><|image_pad|><|vision_end|>"
        "\nmake it blue<|im_end|>\n<|im_start|>assistant\n")
    # negative branch of an edit: same blocks, no "Generate an image:" prefix
    assert edit_prompt("", [1]) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\n<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(DeepGenInputError):
        edit_prompt("x", [])


def test_pad_id_comes_from_the_tokenizer(tiny):
    assert pad_token_id(tiny.tokenizer) == tiny.token_ids["<|endoftext|>"]


def test_pair_is_left_padded_with_endoftext(tiny):
    tok = tiny.tokenizer
    pos = t2i_prompt("a photo of a dog running on the beach at sunset, highly detailed.")
    neg = t2i_prompt("")
    ids, mask = tokenize_pair(tok, [pos], [neg])
    alone = [tok(t, add_special_tokens=False)["input_ids"] for t in (pos, neg)]
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (2, len(alone[0]))
    n_pad = len(alone[0]) - len(alone[1])
    assert n_pad > 0
    pad = tiny.token_ids["<|endoftext|>"]
    assert ids[1, :n_pad].eq(pad).all() and not mask[1, :n_pad].any()
    assert ids[1, n_pad:].tolist() == alone[1] and mask[1, n_pad:].all()
    assert ids[0].tolist() == alone[0] and mask[0].all()
    # special tokens are single ids, and add_special_tokens adds nothing for Qwen2 tokenizers
    assert ids[1, n_pad] == tiny.token_ids["<|im_start|>"]
    assert ids[0, -1] != pad
    # same as the release's call: tokenizer(texts, padding=True, padding_side="left")
    ref = tok([pos, neg], add_special_tokens=True, padding=True, padding_side="left", return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"].bool())


def test_batch_rows_are_positives_then_negatives(tiny):
    tok = tiny.tokenizer
    pos = [t2i_prompt("a red cat"), t2i_prompt("a small old dog")]
    neg = [t2i_prompt(""), t2i_prompt("blurry")]
    ids, mask = tokenize_pair(tok, pos, neg)
    assert ids.shape[0] == 4
    for row, text in zip(range(4), pos + neg):
        assert ids[row][mask[row]].tolist() == tok(text)["input_ids"]
    image_row = edit_prompt("x", [3, 2])
    ids, _ = tokenize_pair(tok, [image_row], [edit_prompt("", [3, 2])])
    assert (ids == tiny.token_ids["<|image_pad|>"]).sum(dim=1).tolist() == [5, 5]


def test_pair_needs_matching_lists(tiny):
    with pytest.raises(DeepGenInputError):
        tokenize_pair(tiny.tokenizer, ["a", "b"], ["c"])
    with pytest.raises(DeepGenInputError):
        tokenize_pair(tiny.tokenizer, [], [])
