"""deepgen_model.download: the planner, the check report and the skip/resume logic, all offline.

huggingface_hub is never called: downloads go through a fake hub object; --dry-run/--check must work
when huggingface_hub cannot even be imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from deepgen_model import download as dl
from deepgen_model.release import detect_layout

REPO = Path(__file__).resolve().parents[2]
SPEC_SHA = {  # docs/inference.md#native-layout, #diffusers-layout
    ("model.pt", "model.pt"): "9d2a4cc7b12a69bc3d481ba331b4ceec2dfd12f39de9d0985fad6431ef14d578",
    ("release", "transformer/diffusion_pytorch_model.safetensors"):
        "54078ee51ab477275e94b610249ea912d6f80d24256c4197fe48945eef706883",
    ("release", "vae/diffusion_pytorch_model.safetensors"):
        "5a170129752b4ad4ab98996d2e59097c8c693afc31a5964bd2ad60896686c1e2",
    ("release", "connector/model.safetensors"): "425ce59f596eeb573f9cd52138b775df47ce69c60d2782fb32cac5498ed208f3",
    ("release", "vlm/model-00001-of-00002.safetensors"):
        "d6f11cc9c30184ce92605f25ac1e6b6644ee217e7b86a28282b3c9b17de3e609",
    ("release", "vlm/model-00002-of-00002.safetensors"):
        "c675c19a231b0ead141d8d3a05fe930892ddf17f1324d75bb94d2a42a79f7ebc",
}


def safetensors_bytes(n_floats: int = 4) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * (4 * n_floats)


def rel(items, to):
    return {str(i.dest.relative_to(to)) for i in items}


# ------------------------------------------------------------------------------------------- planning

def test_diffusers_plan_goes_into_the_release_folder(tmp_path):
    items = dl.plan(tmp_path, "diffusers")
    assert {i.part.repo for i in items} == {"deepgenteam/DeepGen-1.0-diffusers"}
    assert all(i.dest.parent.is_relative_to(tmp_path / "DeepGen-1.0-diffusers") for i in items)
    assert {"DeepGen-1.0-diffusers/model_index.json", "DeepGen-1.0-diffusers/connector/model.safetensors",
            "DeepGen-1.0-diffusers/vlm/model-00002-of-00002.safetensors",
            "DeepGen-1.0-diffusers/transformer/diffusion_pytorch_model.safetensors"} <= rel(items, tmp_path)
    i = next(i for i in items if i.spec.path == "vae/diffusion_pytorch_model.safetensors")
    assert i.url == ("https://huggingface.co/deepgenteam/DeepGen-1.0-diffusers/resolve/main/"
                     "vae/diffusion_pytorch_model.safetensors")


def test_native_plan_three_repositories(tmp_path):
    items = dl.plan(tmp_path, "native", optional=False)
    assert {(i.part.repo, i.part.folder) for i in items} == {
        ("deepgenteam/DeepGen-1.0", "DeepGen-1.0"), ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-3B-Instruct"),
        ("Skywork/UniPic2-SD3.5M-Kontext-2B", "UniPic2-SD3.5M-Kontext-2B")}
    paths = rel(items, tmp_path)
    assert "DeepGen-1.0/model.pt" in paths
    # UniPic2: only the DiT config (model.pt carries the fine-tuned DiT), the VAE and the scheduler
    assert {p for p in paths if p.startswith("UniPic2")} == {
        "UniPic2-SD3.5M-Kontext-2B/transformer/config.json", "UniPic2-SD3.5M-Kontext-2B/vae/config.json",
        "UniPic2-SD3.5M-Kontext-2B/vae/diffusion_pytorch_model.safetensors",
        "UniPic2-SD3.5M-Kontext-2B/scheduler/scheduler_config.json"}
    assert not fnmatch_any("transformer/diffusion_pytorch_model.safetensors", dl.PARTS["unipic2"].patterns)


def fnmatch_any(path, patterns):
    import fnmatch

    return any(fnmatch.fnmatch(path, p) for p in patterns)


def test_include_selects_parts(tmp_path):
    assert {i.spec.part for i in dl.plan(tmp_path, "native", include=["qwen"])} == {"qwen"}
    with pytest.raises(SystemExit, match="unknown part"):
        dl.plan(tmp_path, "native", include=["sd35"])


def test_spec_checksums_and_sizes():
    table = {(f.part, f.path): f for f in dl.FILES}
    for key, sha in SPEC_SHA.items():
        assert table[key].sha256 == sha, key
    assert sum(f.sha256 is not None for f in dl.FILES) == len(SPEC_SHA)
    # bf16 DiT payload (docs/inference.md#diffusers-layout) and fp32 connector (432,449,532 elements)
    assert table["release", "transformer/diffusion_pytorch_model.safetensors"].approx_bytes == 4_939_433_672
    assert table["release", "connector/model.safetensors"].approx_bytes == 4 * 432_449_532
    assert all(f.required for f in dl.FILES if f.sha256)


def test_folder_names_match_the_loaders_and_the_tiny_release(tiny_layouts):
    """The planner's folders are the ones the nodes list and the fixtures mimic; a complete tiny copy
    of each layout passes --check (so the table asks for nothing the loaders do not need by name)."""
    root = tiny_layouts["diffusers"].parent
    assert tiny_layouts["diffusers"] == root / dl.PARTS["release"].folder
    assert tiny_layouts["qwen"] == root / dl.PARTS["qwen"].folder
    assert tiny_layouts["unipic2"] == root / dl.PARTS["unipic2"].folder
    assert tiny_layouts["native"] == root / dl.PARTS["model.pt"].folder / "model.pt"
    assert detect_layout(root / dl.PARTS["release"].folder) == "diffusers"
    for layout in dl.LAYOUTS:
        ok, lines = dl.check_report(root, layout)
        assert ok, "\n".join(lines)


def test_example_workflow_model_entries_are_in_the_table():
    """properties.models of the example workflows (ComfyUI's missing-model dialog) name table files."""
    known = {(f"{dl.PARTS[f.part].folder}/{f.path}",
              f"https://huggingface.co/{dl.PARTS[f.part].repo}/resolve/main/{f.path}") for f in dl.FILES}
    seen = 0
    for wf in sorted((REPO / "example_workflows").glob("*.json")):
        for node in json.loads(wf.read_text(encoding="utf-8")).get("nodes", []):
            for m in (node.get("properties") or {}).get("models", []):
                if m.get("directory") == "deepgen":
                    assert (m["name"], m["url"]) in known, (wf.name, m)
                    seen += 1
    if not seen:
        pytest.skip("no example workflow declares deepgen models")


def test_detect_layout_of_a_models_folder(tmp_path):
    assert dl.detect(tmp_path) == "diffusers"  # nothing there: the default download
    (tmp_path / "DeepGen-1.0").mkdir()
    assert dl.detect(tmp_path) == "native"
    (tmp_path / "DeepGen-1.0-diffusers").mkdir()
    assert dl.detect(tmp_path) == "diffusers"


# ------------------------------------------------------------------------------------------- check mode

def test_check_empty_folder_lists_every_file_url_and_destination(tmp_path):
    ok, lines = dl.check_report(tmp_path, "diffusers", python="PY")
    text = "\n".join(lines)
    assert not ok
    required = dl.plan(tmp_path, "diffusers", optional=False)
    assert f"{len(required)} of {len(required)} required files are missing" in text
    for i in required:
        assert f"MISSING  DeepGen-1.0-diffusers/{i.spec.path}" in text
        assert f"  {i.url}\n      -> {i.dest}" in text
    assert "connector/config.json" not in text  # optional files are never demanded
    assert f"PY -m deepgen_model.download --to {tmp_path} --layout diffusers" in text


def test_check_names_exactly_the_missing_and_broken_files(tiny_layouts, tmp_path):
    to = tmp_path / "models"
    shutil.copytree(tiny_layouts["diffusers"], to / "DeepGen-1.0-diffusers")
    release = to / "DeepGen-1.0-diffusers"
    (release / "vlm" / "model-00002-of-00002.safetensors").unlink()
    dit = release / "transformer" / "diffusion_pytorch_model.safetensors"
    dit.write_bytes(dit.read_bytes()[:-100])  # an interrupted copy
    (release / "scheduler" / "scheduler_config.json").write_text("{", encoding="utf-8")
    ok, lines = dl.check_report(to, "diffusers")
    assert not ok
    flagged = [line for line in lines if line.startswith(("  MISSING", "  BROKEN"))]
    assert flagged[0].split()[:2] == ["BROKEN", "DeepGen-1.0-diffusers/transformer/diffusion_pytorch_model.safetensors"]
    assert "truncated safetensors" in flagged[0]
    assert [line.split()[1] for line in flagged] == [
        "DeepGen-1.0-diffusers/transformer/diffusion_pytorch_model.safetensors",
        "DeepGen-1.0-diffusers/vlm/model-00002-of-00002.safetensors",
        "DeepGen-1.0-diffusers/scheduler/scheduler_config.json"]
    assert "3 of 14 required files are missing or incomplete" in "\n".join(lines)
    urls = [line.strip() for line in lines if line.strip().startswith("https://")]
    assert len(urls) == 3


def test_truncated_model_pt_is_broken(tiny_layouts, tmp_path):
    data = tiny_layouts["native"].read_bytes()
    item = dl.Planned(dl.FileSpec("model.pt", "model.pt"), tmp_path)
    (tmp_path / "model.pt").write_bytes(data)
    assert dl.state(item) is None
    (tmp_path / "model.pt").write_bytes(data[: len(data) // 2])
    assert dl.state(item).startswith("unreadable")


def test_sha256_verification(tmp_path):
    body = safetensors_bytes()
    (tmp_path / "w.safetensors").write_bytes(body)
    good = dl.Planned(dl.FileSpec("release", "w.safetensors", sha256=hashlib.sha256(body).hexdigest()), tmp_path)
    bad = dl.Planned(dl.FileSpec("release", "w.safetensors", sha256="0" * 64), tmp_path)
    assert dl.state(good, verify_sha256=True) is None
    assert dl.state(bad) is None  # hashing only on request
    assert dl.state(bad, verify_sha256=True).startswith("sha256 ")
    assert dl.state(dl.Planned(bad.spec, tmp_path, size=len(body) + 1)).startswith("size ")


def test_cli_check_exit_codes(tiny_layouts, tmp_path, capsys):
    assert dl.main(["--to", str(tiny_layouts["diffusers"].parent), "--check"]) == 0
    assert "All 14 required files are present." in capsys.readouterr().out
    assert dl.main(["--to", str(tmp_path), "--check", "--layout", "native"]) == 1
    out = capsys.readouterr().out
    assert "DeepGen-1.0/model.pt" in out and "--layout native" in out


# ------------------------------------------------------------------------------------------- downloading

def entry(path, size, sha=None):
    return SimpleNamespace(path=path, size=size, lfs={"sha256": sha} if sha else None)


UNIPIC2_LISTING = {  # what the hub would list for Skywork/UniPic2-SD3.5M-Kontext-2B
    "README.md": b"# UniPic2",
    "model_index.json": b"{}",
    "transformer/config.json": b'{"num_layers": 24}',
    "transformer/diffusion_pytorch_model.safetensors": safetensors_bytes(64),
    "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.safetensors": safetensors_bytes(8),
    "scheduler/scheduler_config.json": b'{"shift": 3.0}',
}


class FakeHub:
    """Stands in for the huggingface_hub module: a listing and a downloader that records its calls."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.calls = files, []
        hub = self

        class HfApi:
            def list_repo_tree(self, repo, recursive=False, revision=None):
                assert recursive
                hub.calls.append(("list", repo, revision))
                return [entry(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in hub.files.items()]

        self.HfApi = HfApi

    def hf_hub_download(self, repo, filename, revision=None, local_dir=None):
        self.calls.append(("get", repo, filename, revision, Path(local_dir)))
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.files[filename])
        return str(dest)


def test_remote_plan_follows_patterns_with_exact_sizes(tmp_path):
    items = dl.plan(tmp_path, "native", include=["unipic2"])
    got = dl.remote_plan(items, lambda repo, rev: [entry(p, len(b), "ab" * 32) for p, b in UNIPIC2_LISTING.items()])
    assert {i.spec.path: i.size for i, _ in got} == {
        p: len(b) for p, b in UNIPIC2_LISTING.items()
        if p in ("transformer/config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json")}
    assert all(sha == "ab" * 32 for _, sha in got)
    with pytest.raises(SystemExit, match="scheduler/scheduler_config.json"):
        dl.remote_plan(items, lambda repo, rev: [entry("vae/config.json", 2), entry("transformer/config.json", 2),
                                                 entry("vae/diffusion_pytorch_model.safetensors", 9)])


def test_remote_plan_keeps_optional_extras_of_the_release(tmp_path):
    listing = [entry(f.path, 10) for f in dl.FILES if f.part == "release"] + [
        entry("tokenizer/tokenizer.json", 5), entry("deepgen_pipeline.py", 5), entry("README.md", 5),
        entry(".gitattributes", 5)]
    got = {i.spec.path for i, _ in dl.remote_plan(dl.plan(tmp_path, "diffusers"), lambda r, v: listing)}
    assert "tokenizer/tokenizer.json" in got and "connector/config.json" in got
    assert not {"deepgen_pipeline.py", "README.md", ".gitattributes"} & got


def test_download_skips_complete_files_and_refetches_partial_ones(tmp_path):
    hub = FakeHub(UNIPIC2_LISTING)
    root = tmp_path / "UniPic2-SD3.5M-Kontext-2B"
    (root / "vae").mkdir(parents=True)
    (root / "vae" / "config.json").write_bytes(b"{}")  # already complete
    vae = UNIPIC2_LISTING["vae/diffusion_pytorch_model.safetensors"]
    (root / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(vae[:-4])  # partial
    written = dl.download(tmp_path, "native", include=["unipic2"], revision="abc123", hub=hub)
    gets = [c for c in hub.calls if c[0] == "get"]
    assert ("list", "Skywork/UniPic2-SD3.5M-Kontext-2B", "abc123") in hub.calls
    assert {c[2] for c in gets} == {"transformer/config.json", "vae/diffusion_pytorch_model.safetensors",
                                    "scheduler/scheduler_config.json"}
    assert all(c[1] == "Skywork/UniPic2-SD3.5M-Kontext-2B" and c[3] == "abc123" and c[4] == root for c in gets)
    assert sorted(written) == sorted(root / c[2] for c in gets)
    assert (root / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == vae
    assert not (root / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    # everything complete now: a second run downloads nothing
    hub.calls.clear()
    assert dl.download(tmp_path, "native", include=["unipic2"], hub=hub) == []
    assert [c[0] for c in hub.calls] == ["list"]


def test_download_rejects_a_file_that_arrives_corrupt(tmp_path):
    class Corrupting(FakeHub):
        def hf_hub_download(self, repo, filename, revision=None, local_dir=None):
            dest = Path(super().hf_hub_download(repo, filename, revision, local_dir))
            dest.write_bytes(dest.read_bytes()[:-1])
            return str(dest)

    with pytest.raises(SystemExit, match="after downloading"):
        dl.download(tmp_path, "native", include=["unipic2"], hub=Corrupting(UNIPIC2_LISTING))


# ------------------------------------------------------------------------------------------- no hub needed

def test_missing_huggingface_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import now raises ImportError
    with pytest.raises(SystemExit, match="pip install huggingface_hub"):
        dl._hub()


def test_dry_run_and_check_never_import_huggingface_hub(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert dl.main(["--to", str(tmp_path), "--dry-run", "--layout", "native"]) == 0
    out = capsys.readouterr().out
    assert "9d2a4cc7b12a69bc3d481ba331b4ceec2dfd12f39de9d0985fad6431ef14d578" in out
    assert "[qwen] Qwen/Qwen2.5-VL-3B-Instruct" in out and "missing  model.pt" in out
    assert dl.main(["--to", str(tmp_path), "--check"]) == 1


def test_import_is_light():
    code = ("import sys, deepgen_model.download; "
            "assert not {'torch', 'huggingface_hub'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_default_destination_only_inside_comfyui(monkeypatch, tmp_path):
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "ComfyUI-DeepGen"
    pack.mkdir(parents=True)
    monkeypatch.setattr(dl, "PACK_ROOT", pack)
    monkeypatch.setenv("DEEPGEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PWD", raising=False)
    assert dl.default_to() is None  # no main.py: not a ComfyUI folder
    (tmp_path / "ComfyUI" / "main.py").write_text("")
    assert dl.default_to() == tmp_path / "ComfyUI" / "models" / "deepgen"


@pytest.mark.parametrize("how", ["run_example workspace", "shell in the link"])
def test_default_destination_of_a_standalone_clone_through_its_link(monkeypatch, tmp_path, how):
    """A clone outside ComfyUI, linked into a custom_nodes folder (as scripts/run_example.sh does)."""
    clone = tmp_path / "clone"
    clone.mkdir()
    monkeypatch.setattr(dl, "PACK_ROOT", clone)
    monkeypatch.setenv("DEEPGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PWD", str(clone))
    assert dl.default_to() is None
    if how == "run_example workspace":
        base = tmp_path / "home" / "workspace"
        (base / "models").mkdir(parents=True)
    else:
        base = tmp_path / "ComfyUI"
        base.mkdir()
        (base / "main.py").write_text("")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-DeepGen").symlink_to(clone)
    if how == "shell in the link":
        assert dl.default_to() is None  # the shell is still in the clone itself
        monkeypatch.setenv("PWD", str(base / "custom_nodes" / "ComfyUI-DeepGen"))
    assert dl.default_to() == base / "models" / "deepgen"


def test_dry_run_needs_no_destination(monkeypatch, capsys):
    monkeypatch.setattr(dl, "default_to", lambda: None)
    assert dl.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "goes into your ComfyUI's models/deepgen" in out and "vlm/model.safetensors.index.json" in out
    assert "missing" not in out  # nothing to compare against
    with pytest.raises(SystemExit) as e:
        dl.main(["--check"])
    assert e.value.code == 2


def test_docs_reproduce_the_table():
    docs = (REPO / "docs" / "weights.md").read_text(encoding="utf-8")
    assert dl.markdown_table() in docs, "docs/weights.md is stale: paste `python -m deepgen_model.download --markdown`"


def test_cli_download_failure_is_reported_not_raised(monkeypatch, tmp_path, capsys):
    class Offline(FakeHub):
        def __init__(self):
            super().__init__({})

            class HfApi:
                def list_repo_tree(self, *a, **k):
                    raise ConnectionError("Name or service not known")

            self.HfApi = HfApi

    monkeypatch.setattr(dl, "_hub", lambda repo: Offline())
    assert dl.main(["--to", str(tmp_path), "--include", "unipic2"]) == dl.EXIT_DOWNLOAD_FAILED == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert "download failed: could not fetch Skywork/UniPic2-SD3.5M-Kontext-2B" in err
    assert "(ConnectionError: Name or service not known)" in err and "run the same command again" in err


def closed_port_url() -> str:
    with socket.socket() as s:  # a port nobody listens on: connection refused, no DNS, no real network
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_unreachable_hub_is_said_at_once_before_any_retry(tmp_path):
    """huggingface_hub retries an unreachable endpoint for ~25 s, a line per retry, before failing."""
    pytest.importorskip("huggingface_hub")
    endpoint = closed_port_url()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "deepgen_model.download", "--to", str(tmp_path), "--include", "unipic2"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_ENDPOINT": endpoint})
    took = time.monotonic() - t0
    assert proc.returncode == dl.EXIT_DOWNLOAD_FAILED, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Retry" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"download failed: could not fetch Skywork/UniPic2-SD3.5M-Kontext-2B from {endpoint} ")
    assert "Connection refused" in proc.stderr and "run the same command again" in proc.stderr
    assert took < 15, f"{took:.1f}s"  # the hub client's retries alone take 25 s


def test_a_destination_is_never_created_silently(tmp_path, monkeypatch, capsys):
    typo = tmp_path / "ComfyUl" / "models" / "deepgen"  # its parent does not exist either: a typo
    assert dl.main(["--to", str(typo)]) == dl.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"{typo} does not exist, nor does {typo.parent}: check the path") and "mkdir -p" in err
    assert not (tmp_path / "ComfyUl").exists()
    new = tmp_path / "deepgen"  # a new model folder inside an existing one: created, and said first
    monkeypatch.setattr(dl, "download", lambda *a, **k: [])
    dl.main(["--to", str(new)])
    assert capsys.readouterr().out.startswith(f"note: {new} does not exist yet; the download creates it\n")


def test_unreachable_file_is_one_line(tmp_path):
    class Refused(FakeHub):
        def hf_hub_download(self, *a, **k):
            raise OSError("[Errno 111] Connection refused\n  more detail that is not needed\n")

    with pytest.raises(SystemExit) as e:
        dl.download(tmp_path, "native", include=["unipic2"], hub=Refused(UNIPIC2_LISTING))
    msg = str(e.value)
    assert "\n" not in msg and "OSError: [Errno 111] Connection refused)" in msg
    assert "Skywork/UniPic2-SD3.5M-Kontext-2B/" in msg


# ------------------------------------------------------------------------------------------- one file (--file)

def test_source_of_a_file_is_the_most_specific_table_row(tmp_path):
    release, qwen = tmp_path / "DeepGen-1.0-diffusers", tmp_path / "Qwen2.5-VL-3B-Instruct"
    item = dl.source_of(release / "vlm" / "model-00002-of-00002.safetensors")
    assert (item.part.repo, item.spec.path, item.root) == (
        "deepgenteam/DeepGen-1.0-diffusers", "vlm/model-00002-of-00002.safetensors", release)
    item = dl.source_of(qwen / "model-00002-of-00002.safetensors")
    assert (item.part.repo, item.root) == ("Qwen/Qwen2.5-VL-3B-Instruct", qwen)
    assert dl.source_of(qwen / "config.json").part.name == "qwen"  # a required file beats model.pt's optional one
    assert dl.source_of(tmp_path / "UniPic2-SD3.5M-Kontext-2B" / "vae" / "config.json").part.name == "unipic2"
    assert dl.source_of(tmp_path / "renamed" / "vae" / "config.json").part.name == "release"
    assert dl.source_of(tmp_path / "notes.txt") is None


def test_file_fetches_exactly_the_named_file_into_its_folder(tmp_path, capsys):
    release = tmp_path / "DeepGen-1.0-diffusers"
    (release / "vlm").mkdir(parents=True)
    shard = "vlm/model-00002-of-00002.safetensors"
    hub = FakeHub({shard: safetensors_bytes(8), "vlm/model-00001-of-00002.safetensors": safetensors_bytes(4),
                   "vlm/config.json": b"{}", "README.md": b"#"})
    assert dl.fetch_files([release / shard], hub=hub) == 0
    assert [c for c in hub.calls if c[0] == "get"] == [("get", "deepgenteam/DeepGen-1.0-diffusers", shard, None, release)]
    assert (release / shard).read_bytes() == hub.files[shard]
    assert "1 files" in capsys.readouterr().out


def test_file_refuses_a_path_the_table_does_not_know(tmp_path, capsys):
    assert dl.main(["--file", str(tmp_path / "notes.txt")]) == dl.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"not a file of the DeepGen download table: {tmp_path / 'notes.txt'}" in err and "--dry-run" in err
