"""The API-format edit workflow: the built-in template, placeholder roles, per-item filling.

A role is what the batch fills per item. For each role, nodes whose ``_meta.title`` contains the
marker (e.g. "Load Image (batch:image)") are used; with no marked node, the node class defaults below
apply. image and instruction need exactly one node; seed, size and output fill every match.
"""
from __future__ import annotations

import copy
import hashlib
import json

DEFAULT_CKPT = "DeepGen-1.0-diffusers"
# the authors' evaluation negative for edits (deepgen_model/constants.py EDIT_NEGATIVE; copied, since this
# package must not import the engine)
EDIT_NEGATIVE = (
    "blurry, low quality, low resolution, distorted, deformed, broken content, missing parts, "
    "damaged details, artifacts, glitch, noise, pixelated, grainy, compression artifacts, "
    "bad composition, wrong proportion, incomplete editing, unfinished, unedited areas."
)

# role -> (title marker, default class types, candidate input names in preference order)
ROLES = {
    "image": ("batch:image", ("LoadImage",), ("image",)),
    "instruction": ("batch:instruction", ("DeepGenEditEncode",), ("prompt", "text", "instruction", "string", "value")),
    "negative": ("batch:negative", ("DeepGenEditEncode",), ("negative_prompt",)),
    "seed": ("batch:seed", ("DeepGenSampler", "KSampler", "KSamplerAdvanced", "RandomNoise"),
             ("seed", "noise_seed", "value")),
    "size": ("batch:size", ("DeepGenEditEncode",), ("max_side", "width", "height")),
    "output": ("batch:output", ("SaveImage",), ("filename_prefix",)),
}
SINGLE = ("image", "instruction")
OUTPUT_SUBFOLDER = "deepgen-batch"


class WorkflowError(ValueError):
    pass


def builtin(ckpt_name: str = DEFAULT_CKPT) -> dict:
    """Equivalent of the pack's single-image edit graph (defaults: 50 steps, cfg 4, max_side 512)."""
    return {
        "1": {"class_type": "DeepGenCheckpointLoader", "_meta": {"title": "DeepGen Checkpoint Loader"},
              "inputs": {"ckpt_name": ckpt_name, "vlm_base": "none", "dit_base": "none", "weight_dtype": "auto",
                         "quantization": "none", "attention": "sdpa"}},
        "2": {"class_type": "LoadImage", "_meta": {"title": "Load Image (batch:image)"}, "inputs": {"image": ""}},
        "3": {"class_type": "DeepGenEditEncode", "_meta": {"title": "DeepGen Edit Encode"},
              "inputs": {"vlm": ["1", 1], "scb": ["1", 2], "vae": ["1", 3], "prompt": "",
                         "negative_prompt": EDIT_NEGATIVE, "image1": ["2", 0], "max_side": 512,
                         "width": 512, "height": 512}},
        "4": {"class_type": "DeepGenSampler", "_meta": {"title": "DeepGen Sampler"},
              "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 1], "latent": ["3", 2],
                         "seed": 0, "steps": 50, "cfg": 4.0}},
        "5": {"class_type": "VAEDecode", "_meta": {"title": "VAE Decode"},
              "inputs": {"samples": ["4", 0], "vae": ["1", 3]}},
        "6": {"class_type": "SaveImage", "_meta": {"title": "Save Image"},
              "inputs": {"images": ["5", 0], "filename_prefix": f"{OUTPUT_SUBFOLDER}/edit"}},
    }


def load(path) -> dict:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as e:
            raise WorkflowError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]  # a saved POST /prompt body
    if not isinstance(data, dict) or "nodes" in data or not all(
            isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise WorkflowError(f"{path}: not an API-format workflow. In ComfyUI use Workflow -> Export (API), "
                            "not Save (the UI format with 'nodes' and 'links').")
    return data


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[1], int)


class Workflow:
    """A template plus where each role goes: ``targets[role] = [(node_id, [input names])]``."""

    def __init__(self, prompt: dict):
        self.prompt = copy.deepcopy(prompt)
        self.targets = {role: self._find(role) for role in ROLES}
        for role in SINGLE:
            found = self.targets[role]
            if len(found) != 1:
                marker, classes, _ = ROLES[role]
                what = "no node" if not found else f"{len(found)} nodes ({', '.join(n for n, _ in found)})"
                raise WorkflowError(f"workflow: {what} for the {role}: give exactly one node the title "
                                    f"'{marker}' (or use exactly one {' / '.join(classes)} node)")
        if not self.targets["output"]:
            raise WorkflowError("workflow has no SaveImage node (or node titled 'batch:output'): "
                                "nothing would be saved to download")

    def _find(self, role: str) -> list[tuple[str, list[str]]]:
        marker, classes, names = ROLES[role]
        marked = [nid for nid, n in self.prompt.items()
                  if marker in str((n.get("_meta") or {}).get("title", "")).lower()]
        nodes = marked or [nid for nid, n in self.prompt.items() if n.get("class_type") in classes]
        found = []
        for nid in nodes:
            inputs = self.prompt[nid].get("inputs", {})
            present = [k for k in names if k in inputs and not _is_link(inputs[k])]
            if role not in ("size", "seed"):
                present = present[:1]
            if not present and marked:
                raise WorkflowError(f"workflow node {nid} is titled '{marker}' but has none of the inputs "
                                    f"{', '.join(names)} as a widget value")
            if present:
                found.append((nid, present))
        return found

    def per_item_inputs(self) -> set[tuple[str, str]]:
        return {(nid, k) for found in self.targets.values() for nid, names in found for k in names}

    def set_everywhere(self, name: str, value) -> int:
        """Set a widget input on every node that has it as a literal (e.g. steps, cfg, ckpt_name)."""
        count = 0
        for node in self.prompt.values():
            inputs = node.get("inputs", {})
            if name in inputs and not _is_link(inputs[name]):
                inputs[name] = value
                count += 1
        return count

    def set_input(self, node_id: str, name: str, value):
        if node_id not in self.prompt:
            raise WorkflowError(f"--set {node_id}.{name}: the workflow has no node {node_id!r} "
                                f"(nodes: {', '.join(self.prompt)})")
        self.prompt[node_id].setdefault("inputs", {})[name] = value

    def fill(self, *, image: str, instruction: str, seed: int, output_prefix: str, negative: str | None = None,
             width: int | None = None, height: int | None = None, max_side: int | None = None) -> dict:
        prompt = copy.deepcopy(self.prompt)
        size = {"width": width, "height": height, "max_side": max_side}
        values = {"image": image, "instruction": instruction, "seed": seed, "output": output_prefix,
                  "negative": negative}
        for role, found in self.targets.items():
            for nid, names in found:
                for k in names:
                    v = size[k] if role == "size" else values[role]
                    if v is not None:
                        prompt[nid]["inputs"][k] = v
        return prompt


def fingerprint(prompt: dict) -> str:
    """What decides the result of an item (the output prefix left out): resume redoes an item whose
    fingerprint changed (other instruction, seed, image content, steps, model...)."""
    blank = copy.deepcopy(prompt)
    for node in blank.values():
        node.pop("_meta", None)
        if node.get("class_type") == "SaveImage" or "filename_prefix" in node.get("inputs", {}):
            node["inputs"].pop("filename_prefix", None)
    return hashlib.sha256(json.dumps(blank, sort_keys=True).encode()).hexdigest()[:16]
