"""The pack loads cleanly into a real ComfyUI 0.3.75 (server and in-process), and the harness runs prompts."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PACK = "ComfyUI-DeepGen"
REPO = Path(__file__).resolve().parents[2]
COLOR = 0xFF8000  # EmptyImage's colour is 0xRRGGBB


def _is_deepgen_category(category: str) -> bool:
    return category == "DeepGen" or category.startswith("DeepGen/")


def _core_prompt(prefix: str, width: int = 40) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": 24, "batch_size": 1, "color": COLOR}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def _check_png(path: Path, width: int):
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (24, width, 3)
    assert (pixels == (0xFF, 0x80, 0x00)).all()


def _pack_js() -> list[str]:
    web = REPO / "web"
    return sorted(p.relative_to(web).as_posix() for p in web.rglob("*.js")) if web.is_dir() else []


def _tracebacks(log: str) -> list[str]:
    """Each 'Traceback ...' block of the log, up to the first line back at column 0 after it."""
    return re.findall(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*.*", log)


# ------------------------------------------------------------------ in-process

def test_pack_loads_inprocess(comfy_inprocess):
    assert comfy_inprocess.pack_loaded, "nodes.load_custom_node returned False (see the warning logged above)"
    assert comfy_inprocess.pack is not None
    assert set(comfy_inprocess.pack_nodes) == comfy_inprocess.declared_nodes(), "declared != registered"
    for node_id, cls in comfy_inprocess.pack_nodes.items():
        assert _is_deepgen_category(getattr(cls, "CATEGORY", "")), f"{node_id}: category {cls.CATEGORY!r}"
    web = comfy_inprocess.nodes.EXTENSION_WEB_DIRS.get(PACK)
    if _pack_js():
        assert web and Path(web).resolve() == (REPO / "web").resolve()


def test_core_prompt_runs_inprocess(comfy_inprocess):
    success, outputs, messages = comfy_inprocess.run(_core_prompt("inproc_core"))
    assert success, messages
    (image,) = outputs["2"]["images"]
    _check_png(comfy_inprocess.output_dir / image["subfolder"] / image["filename"], 40)
    # an identical prompt is served from the cache; fresh=True executes it again
    success, _, messages = comfy_inprocess.run(_core_prompt("inproc_core"))
    cached = next(d["nodes"] for e, d in messages if e == "execution_cached")
    assert success and set(cached) == {"1", "2"}
    success, _, messages = comfy_inprocess.run(_core_prompt("inproc_core"), fresh=True)
    assert success and next(d["nodes"] for e, d in messages if e == "execution_cached") == []


def test_validation_error_inprocess(comfy_inprocess):
    success, outputs, messages = comfy_inprocess.run(_core_prompt("inproc_bad", width=0))
    assert not success and outputs == {}
    (kind, data), = messages
    assert kind == "validation_error" and "1" in data["node_errors"]


# ------------------------------------------------------------------ real server

def test_pack_nodes_in_object_info(comfy_server, comfy_inprocess):
    info = comfy_server.object_info()
    served = {nid for nid, d in info.items() if d.get("python_module") == f"custom_nodes.{PACK}"}
    assert served, "the server lists none of the pack's nodes (see its log: IMPORT FAILED?)"
    assert served == set(comfy_inprocess.pack_nodes), "server and in-process disagree on the pack's nodes"
    for node_id in served:
        assert _is_deepgen_category(info[node_id]["category"]), f"{node_id}: {info[node_id]['category']!r}"
    assert "EmptyImage" in info and "SaveImage" in info  # the listing is real, not empty


def test_server_log_is_clean(comfy_server):
    log = comfy_server.log_text()
    link = str(comfy_server.base / "custom_nodes" / PACK)
    # ComfyUI lists every custom node folder it imported, with "(IMPORT FAILED)" when it failed
    loaded = [ln for ln in log.splitlines() if re.search(r"^\s*[\d.]+ seconds.*: " + re.escape(link) + "$", ln)]
    assert loaded, f"pack missing from ComfyUI's import-times list:\n{comfy_server.log_tail()}"
    assert not any("IMPORT FAILED" in ln for ln in loaded), loaded
    assert not any(PACK in ln for ln in log.splitlines() if "IMPORT FAILED" in ln or "Cannot import" in ln)
    for tb in _tracebacks(log):
        assert PACK not in tb and str(REPO) not in tb, f"traceback from the pack:\n{tb}"
    # the pack imports diffusers, which imports bitsandbytes: its CPU-kernel advice is filtered out
    # (deepgen_model/__init__.py); bitsandbytes prints it only on CPUs with AVX512-BF16
    assert "kernels-community" not in log, [ln for ln in log.splitlines() if "kernels-community" in ln]


def test_web_extensions_served(comfy_server):
    served = [u for u in comfy_server.get("/extensions") if u.startswith(f"/extensions/{PACK}/")]
    assert sorted(u.split(f"/extensions/{PACK}/", 1)[1] for u in served) == _pack_js()
    for url in served:
        status, ctype, body = comfy_server.request("GET", url)
        assert status == 200 and "javascript" in ctype and body


def test_core_prompt_runs_on_server(comfy_server):
    entry = comfy_server.run(_core_prompt("srv_core"), timeout=60)
    assert entry["status"]["completed"]
    (image,) = entry["outputs"]["2"]["images"]
    _check_png(comfy_server.base / "output" / image["subfolder"] / image["filename"], 40)
    status, ctype, body = comfy_server.request("GET", f"/view?filename={image['filename']}&type=output")
    assert status == 200 and ctype == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"


def test_websocket_events(comfy_server):
    run = comfy_server.ws_run(_core_prompt("srv_ws", width=48), timeout=60)
    mine = [t for t, d in run.events if isinstance(d, dict) and d.get("prompt_id") == run.prompt_id]
    assert mine[0] == "execution_start" and mine[-1] == "execution_success", mine
    assert {"execution_cached", "executing", "executed"} <= set(mine)
    (executed,) = run.of("executed")
    assert executed["node"] == "2" and executed["output"]["images"][0]["filename"].startswith("srv_ws")


def test_validation_error_on_server(comfy_server):
    with pytest.raises(comfy_server.PromptRejected) as err:
        comfy_server.post_prompt(_core_prompt("srv_bad", width=0))
    assert err.value.status == 400
    assert err.value.body["error"]["type"] == "prompt_outputs_failed_validation"
    assert "1" in err.value.body["node_errors"]


def test_expert_widgets_are_marked_advanced(comfy_server):
    """weight_dtype, quantization and attention carry `advanced: true` in /object_info (frontends that know the
    flag fold them away); every other widget stays in view."""
    info = comfy_server.object_info()
    for node_id in ("DeepGenCheckpointLoader", "DeepGenVLMLoader", "DeepGenSCBLoader", "DeepGenDiTLoader",
                    "DeepGenVAELoader", "DeepGenTextEncode", "DeepGenEditEncode", "DeepGenSampler"):
        inputs = {**info[node_id]["input"]["required"], **info[node_id]["input"].get("optional", {})}
        marked = {name for name, spec in inputs.items() if len(spec) > 1 and spec[1].get("advanced") is True}
        assert marked == {"weight_dtype", "quantization", "attention"} & set(inputs), node_id
