"""What frontend 1.32.9's Workflow -> Export (API) (its graphToPrompt) makes of a UI-format workflow, given the
server's /object_info. Used by tests/integration/test_example_workflows.py (each template converts to exactly
its API twin) and unit-tested in tests/unit/test_workflow_export.py.

widgets_values are positional over the node's widget inputs (input_order), with one extra value after a
control_after_generate INT (the "fixed"/"randomize" control) and after an image_upload combo (the upload
button's "image"). Muted nodes (mode 2) and bypassed nodes (mode 4) are left out; a link from a bypassed node
carries what flows into it: the frontend passes the input of the same index through when its type fits the
output's, else the first input of the link's type (so a bypassed LoraLoaderModelOnly hands its `model` input
on), and an input whose source resolves to nothing (a muted node, an unconnected bypassed input) is dropped.
"""
from __future__ import annotations

FRONTEND_ONLY = {"Note", "MarkdownNote"}  # frontend-only nodes: no /object_info entry, not in API format
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MUTED, BYPASSED = 2, 4  # LiteGraph node modes ("never", "bypass"; Ctrl+M, Ctrl+B); 0 runs
# UI workflow (named by its template title) -> its API-format twin in example_workflows/api/ (short names for
# scripts and the batch client), which is what Export (API) makes of it: checked with ui_to_api in
# test_example_workflows.py and against the real frontend in the browser test. docs/workflows.md lists the pairs.
TWINS = {"DeepGen 1 - Text to image": "text_to_image", "DeepGen 2 - Edit an image": "image_edit",
         "DeepGen 3 - Multi-image edit": "multi_reference_edit", "DeepGen 4 - Reasoning generation": "reasoning_generation",
         "DeepGen 5 - Reasoning edit": "reasoning_edit", "DeepGen 6 - Text rendering": "text_rendering",
         "DeepGen 7 - Low VRAM (8-bit VLM)": "low_vram_8bit_vlm", "DeepGen 8 - Core custom sampler": "sampler_custom_advanced",
         "DeepGen 9 - LoRA and SLG": "lora_skip_layer_guidance"}


def widget_slots(info: dict) -> list[tuple[str, str, dict]]:
    """(input name, "value" | "control" | "upload", spec options) per widgets_values position, in frontend order."""
    slots = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            spec = info["input"][section][name]
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if kind not in WIDGET_TYPES or opts.get("forceInput"):
                continue
            if isinstance(spec[0], list):
                opts = {**opts, "options": spec[0]}
            slots.append((name, "value", {**opts, "type": kind}))
            if kind == "INT" and opts.get("control_after_generate", name in ("seed", "noise_seed")):
                slots.append((name, "control", {}))
            if opts.get("image_upload"):
                slots.append((name, "upload", {}))
    return slots


def fits(a: str, b: str) -> bool:
    """LiteGraph.isValidConnection: equal types (case aside), a wildcard, or comma-separated alternatives in common."""
    if a in ("", "*", None) or b in ("", "*", None) or a == b:
        return True
    left, right = str(a).lower().split(","), str(b).lower().split(",")
    return any(x == y for x in left for y in right)


def bypass_input(node: dict, out_slot: int, want: str) -> int | None:
    """The input index a bypassed node passes to its output `out_slot` when an input of type `want` asks."""
    inputs, out_type = node.get("inputs", []), node["outputs"][out_slot]["type"]
    if want in ("", "*"):
        return out_slot if len(inputs) > out_slot else 0
    if out_slot < len(inputs) and fits(inputs[out_slot]["type"], out_type) and fits(inputs[out_slot]["type"], want):
        return out_slot
    for rule in (lambda s: s["type"] == want, lambda s: fits(s["type"], out_type) and fits(s["type"], want)):
        found = next((i for i, s in enumerate(inputs) if rule(s)), None)
        if found is not None:
            return found
    return None


def source(nodes: dict, links: dict, link_id: int, want: str) -> tuple[str, int] | None:
    """[node id, output slot] that an input of type `want` fed by `link_id` gets, passed through bypassed nodes;
    None where nothing reaches it."""
    seen = set()
    _, src, slot, *_ = links[link_id]
    while nodes[src].get("mode", 0) == BYPASSED:
        if (src, slot) in seen:
            raise ValueError(f"circular links through bypassed node {src}")
        seen.add((src, slot))
        node = nodes[src]
        i = bypass_input(node, slot, want)
        if i is None or i >= len(node.get("inputs", [])) or node["inputs"][i].get("link") is None:
            return None
        want = node["inputs"][i]["type"]
        _, src, slot, *_ = links[node["inputs"][i]["link"]]
    return str(src), slot


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt of a UI workflow: nodes that run, widget values by name, links resolved."""
    links = {link[0]: link for link in workflow["links"]}
    nodes = {node["id"]: node for node in workflow["nodes"]}
    api = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        info = object_info[node["type"]]
        inputs = {name: value for (name, kind, _), value in zip(widget_slots(info), node.get("widgets_values", []))
                  if kind == "value"}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                found = source(nodes, links, slot["link"], slot["type"])
                if found is not None:
                    inputs[slot["name"]] = [found[0], found[1]]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                "_meta": {"title": node.get("title") or info.get("display_name") or node["type"]}}
    for entry in api.values():  # what still points at a node that does not run (a muted one) is dropped
        entry["inputs"] = {k: v for k, v in entry["inputs"].items()
                          if not (isinstance(v, list) and len(v) == 2 and v[0] not in api)}
    return api
