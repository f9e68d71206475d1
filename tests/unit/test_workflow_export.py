"""tests/workflow_export.py: a UI workflow becomes the API prompt frontend 1.32.9's Export (API) makes, bypassed
(Ctrl+B) and muted (Ctrl+M) nodes included: the checks of every template against its API twin rest on it."""
import pytest

from workflow_export import BYPASSED, MUTED, ui_to_api, widget_slots

# /object_info entries of the core nodes used here, as ComfyUI 0.3.75 declares them (the parts read here)
INFO = {
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors"], {}]}},
                               "input_order": {"required": ["ckpt_name"]}, "display_name": "Load Checkpoint"},
    "LoraLoaderModelOnly": {"input": {"required": {"model": ["MODEL"], "lora_name": [["x.safetensors"], {}],
                                                   "strength_model": ["FLOAT", {"default": 1.0}]}},
                            "input_order": {"required": ["model", "lora_name", "strength_model"]},
                            "display_name": "LoraLoaderModelOnly"},
    "LoraLoader": {"input": {"required": {"model": ["MODEL"], "clip": ["CLIP"], "lora_name": [["x.safetensors"], {}],
                                          "strength_model": ["FLOAT", {}], "strength_clip": ["FLOAT", {}]}},
                   "input_order": {"required": ["model", "clip", "lora_name", "strength_model", "strength_clip"]},
                   "display_name": "Load LoRA"},
    "KSampler": {"input": {"required": {"model": ["MODEL"], "seed": ["INT", {"control_after_generate": True}],
                                        "clip": ["CLIP"]}},
                 "input_order": {"required": ["model", "seed", "clip"]}, "display_name": "KSampler"},
}


def node(id_, type_, inputs=(), outputs=(), widgets=(), mode=0):
    return {"id": id_, "type": type_, "mode": mode, "widgets_values": list(widgets),
            "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
            "outputs": [{"name": t, "type": t, "links": links} for t, links in outputs]}


def chain(*lora_modes):
    """Checkpoint -> LoRA (one per mode) -> ... -> KSampler, linked MODEL to MODEL (CLIP straight to KSampler)."""
    nodes = [node(1, "CheckpointLoaderSimple", outputs=[("MODEL", [1]), ("CLIP", [90])], widgets=["a.safetensors"])]
    links = [[90, 1, 1, 99, 2, "CLIP"]]
    for k, mode in enumerate(lora_modes):
        nid, link_in = 2 + k, 1 + k
        nodes.append(node(nid, "LoraLoaderModelOnly", inputs=[("model", "MODEL", link_in)],
                          outputs=[("MODEL", [link_in + 1])], widgets=["x.safetensors", 0.5], mode=mode))
        links.append([link_in, nid - 1, 0, nid, 0, "MODEL"])
    last = len(lora_modes) + 1
    nodes.append(node(99, "KSampler", inputs=[("model", "MODEL", last), ("clip", "CLIP", 90)], widgets=[7, "fixed"]))
    links.append([last, last, 0, 99, 0, "MODEL"])
    return {"nodes": nodes, "links": links}


def test_widget_values_by_name_with_the_seed_control_skipped():
    assert [s[:2] for s in widget_slots(INFO["KSampler"])] == [("seed", "value"), ("seed", "control")]
    api = ui_to_api(chain(), INFO)
    assert api["99"] == {"class_type": "KSampler", "inputs": {"seed": 7, "model": ["1", 0], "clip": ["1", 1]},
                         "_meta": {"title": "KSampler"}}


def test_an_active_lora_sits_between_loader_and_sampler():
    api = ui_to_api(chain(0), INFO)
    assert api["2"]["inputs"] == {"lora_name": "x.safetensors", "strength_model": 0.5, "model": ["1", 0]}
    assert api["99"]["inputs"]["model"] == ["2", 0]


@pytest.mark.parametrize("modes", [(BYPASSED,), (BYPASSED, BYPASSED), (0, BYPASSED), (BYPASSED, 0)])
def test_a_bypassed_node_hands_its_input_on(modes):
    api = ui_to_api(chain(*modes), INFO)
    assert {k for k, m in zip(("2", "3"), modes) if m == BYPASSED}.isdisjoint(api)
    runs = [str(2 + k) for k, m in enumerate(modes) if m == 0]
    assert api["99"]["inputs"]["model"] == [runs[-1] if runs else "1", 0]
    for nid in runs:  # an active LoRA after a bypassed one reads the model from before it
        assert api[nid]["inputs"]["model"] == ["1", 0]


def test_a_muted_node_is_left_out_with_what_reads_it():
    api = ui_to_api(chain(MUTED), INFO)
    assert "2" not in api and "model" not in api["99"]["inputs"] and api["99"]["inputs"]["clip"] == ["1", 1]


def test_a_bypassed_node_with_nothing_connected_passes_nothing():
    wf = chain(BYPASSED)
    wf["nodes"][1]["inputs"][0]["link"] = None
    wf["links"] = [link for link in wf["links"] if link[0] != 1]
    assert "model" not in ui_to_api(wf, INFO)["99"]["inputs"]


def test_each_output_of_a_bypassed_node_takes_the_input_of_its_type():
    """LoraLoader bypassed: its CLIP output (slot 1) gets its clip input (slot 1), its MODEL output the model."""
    wf = {"nodes": [node(1, "CheckpointLoaderSimple", outputs=[("MODEL", [1]), ("CLIP", [2])]),
                    node(2, "LoraLoader", inputs=[("model", "MODEL", 1), ("clip", "CLIP", 2)],
                         outputs=[("MODEL", [3]), ("CLIP", [4])], widgets=["x.safetensors", 1.0, 1.0], mode=BYPASSED),
                    node(3, "KSampler", inputs=[("model", "MODEL", 3), ("clip", "CLIP", 4)], widgets=[1, "fixed"])],
          "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "CLIP"], [3, 2, 0, 3, 0, "MODEL"], [4, 2, 1, 3, 1, "CLIP"]]}
    wf["nodes"][0]["widgets_values"] = ["a.safetensors"]
    assert ui_to_api(wf, INFO)["3"]["inputs"] == {"seed": 1, "model": ["1", 0], "clip": ["1", 1]}
    # inputs in the other order: found by type, not by index
    wf["nodes"][1]["inputs"].reverse()
    wf["links"][0][4], wf["links"][1][4] = 1, 0
    assert ui_to_api(wf, INFO)["3"]["inputs"] == {"seed": 1, "model": ["1", 0], "clip": ["1", 1]}


def test_notes_never_reach_the_prompt():
    wf = chain(BYPASSED)
    wf["nodes"].append({"id": 50, "type": "MarkdownNote", "mode": 0, "widgets_values": ["# hi"]})
    wf["nodes"].append({"id": 51, "type": "Note", "mode": 0, "widgets_values": ["hi"]})
    assert set(ui_to_api(wf, INFO)) == {"1", "99"}
