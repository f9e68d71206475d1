"""deepgen_batch.workflow + the CLI's workflow options and server pre-flight (no server: fake clients)."""
from __future__ import annotations

import json

import pytest

from deepgen_batch import cli
from deepgen_batch.workflow import EDIT_NEGATIVE, Workflow, WorkflowError, builtin, fingerprint, load


def test_builtin_is_the_single_image_edit_graph():
    g = builtin("my-release")
    assert [n["class_type"] for n in g.values()] == ["DeepGenCheckpointLoader", "LoadImage", "DeepGenEditEncode",
                                                     "DeepGenSampler", "VAEDecode", "SaveImage"]
    assert g["1"]["inputs"]["ckpt_name"] == "my-release"
    enc, smp = g["3"]["inputs"], g["4"]["inputs"]
    assert (enc["vlm"], enc["scb"], enc["vae"], enc["image1"]) == (["1", 1], ["1", 2], ["1", 3], ["2", 0])
    assert (smp["model"], smp["positive"], smp["negative"], smp["latent"]) == (["1", 0], ["3", 0], ["3", 1], ["3", 2])
    assert (smp["steps"], smp["cfg"], enc["max_side"]) == (50, 4.0, 512)  # the authors' defaults


def test_builtin_negative_is_the_engines():
    from deepgen_model.constants import DEFAULT_CFG, DEFAULT_SIZE, DEFAULT_STEPS
    from deepgen_model.constants import EDIT_NEGATIVE as ENGINE

    assert EDIT_NEGATIVE == ENGINE
    g = builtin()
    assert (g["4"]["inputs"]["steps"], g["4"]["inputs"]["cfg"], g["3"]["inputs"]["max_side"]) == (
        DEFAULT_STEPS, DEFAULT_CFG, DEFAULT_SIZE)


def test_fill_sets_each_role():
    wf = Workflow(builtin())
    p = wf.fill(image="deepgen-batch/abc.png", instruction="add snow", seed=2**64 - 1, output_prefix="x/y",
                max_side=256, negative="ugly")
    assert p["2"]["inputs"]["image"] == "deepgen-batch/abc.png"
    assert (p["3"]["inputs"]["prompt"], p["3"]["inputs"]["negative_prompt"], p["3"]["inputs"]["max_side"]) == (
        "add snow", "ugly", 256)
    assert p["3"]["inputs"]["width"] == 512  # unset sizes keep the template's value
    assert p["4"]["inputs"]["seed"] == 2**64 - 1 and p["6"]["inputs"]["filename_prefix"] == "x/y"
    assert wf.prompt["3"]["inputs"]["prompt"] == ""  # the template itself is untouched


def test_fingerprint_ignores_the_output_prefix_only():
    wf = Workflow(builtin())
    base = dict(image="a.png", instruction="x", seed=1, output_prefix="p1")
    fp = fingerprint(wf.fill(**base))
    assert fingerprint(wf.fill(**{**base, "output_prefix": "p2"})) == fp
    assert fingerprint(wf.fill(**{**base, "seed": 2})) != fp
    assert fingerprint(wf.fill(**{**base, "instruction": "y"})) != fp
    assert fingerprint(wf.fill(**{**base, "image": "b.png"})) != fp


def two_reference_graph() -> dict:
    g = builtin()
    g["7"] = {"class_type": "LoadImage", "inputs": {"image": "style.png"}}
    g["3"]["inputs"]["image2"] = ["7", 0]
    return g


def test_titles_pick_the_placeholder_nodes():
    g = two_reference_graph()
    g["2"]["_meta"]["title"] = "Load Image"  # no marker: two LoadImage nodes are ambiguous
    with pytest.raises(WorkflowError, match="2 nodes .* for the image: give exactly one node the title 'batch:image'"):
        Workflow(g)
    g["7"]["_meta"] = {"title": "Subject (BATCH:IMAGE)"}  # case-insensitive, inside a longer title
    wf = Workflow(g)
    p = wf.fill(image="up.png", instruction="i", seed=3, output_prefix="o")
    assert p["7"]["inputs"]["image"] == "up.png" and p["2"]["inputs"]["image"] == ""


def test_titled_node_needs_a_matching_widget():
    g = builtin()
    g["5"]["_meta"]["title"] = "batch:seed"  # VAEDecode has no seed widget
    with pytest.raises(WorkflowError, match="node 5 is titled 'batch:seed'"):
        Workflow(g)


def test_core_sampler_seed_and_missing_nodes():
    g = builtin()
    g["4"] = {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 0, "steps": 20, "model": ["1", 0]}}
    assert Workflow(g).fill(image="a", instruction="b", seed=9, output_prefix="c")["4"]["inputs"]["noise_seed"] == 9
    del g["6"]
    with pytest.raises(WorkflowError, match="no SaveImage"):
        Workflow(g)
    del g["3"]
    with pytest.raises(WorkflowError, match="no node for the instruction"):
        Workflow(g)


def test_load_accepts_api_format_and_rejects_ui_format(tmp_path):
    (tmp_path / "api.json").write_text(json.dumps(builtin()))
    assert load(tmp_path / "api.json")["3"]["class_type"] == "DeepGenEditEncode"
    (tmp_path / "body.json").write_text(json.dumps({"prompt": builtin(), "client_id": "x"}))
    assert "3" in load(tmp_path / "body.json")
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(WorkflowError, match="Export \\(API\\)"):
        load(tmp_path / "ui.json")


def args_for(*extra):
    return cli.parser().parse_args(["in", "-o", "out", "-i", "x", *extra])


def test_cli_overrides_and_set(tmp_path):
    wf = cli.build_workflow(args_for("--steps", "2", "--cfg", "1.5", "--ckpt", "other", "--weight-dtype", "fp32",
                                     "--set", "DeepGenEditEncode.width=64", "--set", "6.filename_prefix=\"keep\""))
    p = wf.prompt
    assert (p["4"]["inputs"]["steps"], p["4"]["inputs"]["cfg"], p["1"]["inputs"]["ckpt_name"]) == (2, 1.5, "other")
    assert p["1"]["inputs"]["weight_dtype"] == "fp32" and p["3"]["inputs"]["width"] == 64
    with pytest.raises(WorkflowError, match="NODE.INPUT=VALUE"):
        cli.build_workflow(args_for("--set", "steps=3"))
    with pytest.raises(WorkflowError, match="no node id or class_type 'KSampler'"):
        cli.build_workflow(args_for("--set", "KSampler.steps=3"))
    custom = builtin()
    del custom["4"]["inputs"]["cfg"]
    (tmp_path / "w.json").write_text(json.dumps(custom))
    with pytest.raises(WorkflowError, match="no node with a 'cfg' widget"):
        cli.build_workflow(args_for("--workflow", str(tmp_path / "w.json"), "--cfg", "2"))


class FakeInfoClient:
    def __init__(self, url, info, up=True):
        self.url, self.info, self.up = url, info, up

    def get_json(self, path, timeout=None):
        from deepgen_batch.api import TransientError

        if not self.up:
            raise TransientError("connection refused")
        return {"queue_running": [], "queue_pending": []}

    def object_info(self, cls):
        return self.info.get(cls)


def object_info(ckpts):
    info = {cls: {"input": {"required": {}}} for cls in
            ("DeepGenCheckpointLoader", "LoadImage", "DeepGenEditEncode", "DeepGenSampler", "VAEDecode", "SaveImage")}
    info["DeepGenCheckpointLoader"]["input"]["required"]["ckpt_name"] = ["COMBO", {"options": ckpts}]
    info["LoadImage"]["input"]["required"]["image"] = [["other.png"], {"image_upload": True}]  # per item: not checked
    return info


def test_preflight_drops_dead_servers_and_names_missing_files():
    wf = Workflow(builtin())
    good = FakeInfoClient("http://a", object_info(["DeepGen-1.0-diffusers"]))
    dead = FakeInfoClient("http://b", {}, up=False)
    logged = []
    assert cli.preflight([dead, good], wf, logged.append) == [good]
    assert "skipping http://b" in logged[0]
    with pytest.raises(cli.UsageError, match="ckpt_name='DeepGen-1.0-diffusers' is not available there; "
                                             "it offers: DeepGen-1.0-converted.*models/deepgen"):
        cli.preflight([FakeInfoClient("http://c", object_info(["DeepGen-1.0-converted"]))], wf, logged.append)
    info = object_info(["DeepGen-1.0-diffusers"])
    del info["DeepGenSampler"]
    with pytest.raises(cli.UsageError, match="has no node 'DeepGenSampler'"):
        cli.preflight([FakeInfoClient("http://d", info)], wf, logged.append)
