"""deepgen_batch.runner / manifest / cli resume against fake servers (no network): errors per item,
retries with back-off, server choice, resume."""
from __future__ import annotations

import functools
import os
import io
import json
import struct
import threading
import zlib

import pytest

from deepgen_batch import cli
from deepgen_batch.api import ItemError, TransientError
from deepgen_batch.manifest import Manifest
from deepgen_batch.plan import build_plan, derive_seed
from deepgen_batch.progress import Progress
from deepgen_batch.runner import Cancelled, Runner, Scheduler, ServersGone, Settings
from deepgen_batch.workflow import Workflow, builtin

PNG = b"\x89PNG\r\n\x1a\n"


def png(tag: bytes = b"") -> bytes:
    """A valid 2x1 grey PNG; ``tag`` (a tEXt chunk) makes files differ."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (PNG + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 8, 0, 0, 0, 0)) + chunk(b"tEXt", b"k\0" + tag)
            + chunk(b"IDAT", zlib.compress(b"\x00\x10\x20")) + chunk(b"IEND", b""))


class FakeServer:
    """Behaviour per instruction: "reject" (validation 400), "explode" (execution_error), "noimage"."""

    def __init__(self, url="http://fake:1", load=0, fail=None):
        self.url, self.load = url, load
        self.fail = dict(fail or {})  # method -> how many more calls fail transiently
        self.prompts, self.cancelled, self.uploads = {}, [], []
        self.lose = {}        # instruction -> how many of its prompts the server "forgets" (restart, cleared queue)
        self.lost = set()

    def _maybe_fail(self, method):
        if self.fail.get(method, 0) > 0:
            self.fail[method] -= 1
            raise TransientError(f"{method}: HTTP 503")

    def queue_load(self, ours=frozenset()):
        self._maybe_fail("queue_load")
        return self.load

    def queue_ids(self, timeout=None):
        self._maybe_fail("queue_ids")
        return set()

    def upload(self, data, name, subfolder):
        self._maybe_fail("upload")
        self.uploads.append(name)
        return f"{subfolder}/{name}"

    def open_ws(self, client_id):
        raise TransientError("websocket refused")  # -> /history polling

    def queue_prompt(self, prompt, prompt_id, client_id):
        self._maybe_fail("queue_prompt")
        if prompt["3"]["inputs"]["prompt"] == "reject":
            raise ItemError("prompt rejected (HTTP 400): node 4 DeepGenSampler: Value 0 smaller than min of 1")
        self.prompts[prompt_id] = prompt
        text = prompt["3"]["inputs"]["prompt"]
        if self.lose.get(text, 0) > 0:
            self.lose[text] -= 1
            self.lost.add(prompt_id)

    def history(self, prompt_id, timeout=None):
        self._maybe_fail("history")
        if prompt_id in self.lost:  # neither in the history nor (queue_ids) in the queue
            return None
        prompt = self.prompts[prompt_id]
        text = prompt["3"]["inputs"]["prompt"]
        if text == "explode":
            return {"status": {"status_str": "error", "messages": [
                ["execution_start", {}], ["execution_error", {"node_id": "3", "node_type": "DeepGenEditEncode",
                                                              "exception_type": "RuntimeError",
                                                              "exception_message": "out of memory\n"}]]}}
        if text == "undecodable":  # what ComfyUI 0.3.x reports for a PNG whose chunks are garbage
            return {"status": {"status_str": "error", "messages": [
                ["execution_error", {"node_id": "2", "node_type": "LoadImage", "exception_type": "UnicodeDecodeError",
                                     "exception_message": "'ascii' codec can't decode byte 0x89 in position 0"}]]}}
        prefix = prompt["6"]["inputs"]["filename_prefix"]
        images = [] if text == "noimage" else [{"filename": prefix.split("/")[-1] + "_00001_.png",
                                                "subfolder": "deepgen-batch", "type": "output"},
                                               {"filename": "preview.png", "subfolder": "", "type": "temp"}]
        return {"status": {"status_str": "success", "messages": []}, "outputs": {"6": {"images": images}}}

    def view(self, image):
        return png(image["filename"].encode())

    def cancel(self, prompt_id):
        self.cancelled.append(prompt_id)


def make_inputs(folder, rows, plan=True):
    folder.mkdir(exist_ok=True)
    for name, _ in rows:
        (folder / name).write_bytes(b"not an image" if "broken" in name else png(name.encode()))
    if not plan:
        return None
    return build_plan(folder, [{"filename": n, "instruction": t} for n, t in rows], instruction=None, seed_base=10)


def runner_for(tmp_path, servers, **settings):
    sleeps = []
    progress = Progress(1, 4, bars=False, stream=io.StringIO())
    settings = Settings(poll=0.001, retry_wait=1.0, cooldown=0.0, **settings)
    r = Runner(servers, Workflow(builtin()), tmp_path / "out", Manifest(tmp_path / "out" / "manifest.jsonl"),
               settings, progress, sleep=sleeps.append)
    return r, sleeps


def test_each_item_gets_a_row_and_errors_do_not_stop_the_batch(tmp_path):
    items = make_inputs(tmp_path / "in", [("good.png", "add snow"), ("broken.png", "x"), ("r.png", "reject"),
                                          ("e.png", "explode"), ("n.png", "noimage"), ("good2.png", "more snow"),
                                          ("u.png", "undecodable")])
    server = FakeServer()
    runner, _ = runner_for(tmp_path, [server])
    rows = {r["input"]: r for r in runner.run(items)}
    assert len(rows) == 7
    assert rows["u.png"]["error"] == ("u.png is not a readable image: the server could not decode it "
                                      "(UnicodeDecodeError: 'ascii' codec can't decode byte 0x89 in position 0)")
    for name in ("good.png", "good2.png"):
        r = rows[name]
        assert r["status"] == "ok" and r["error"] is None and r["server"] == server.url and r["attempts"] == 1
        assert r["outputs"] == [name] and r["fingerprint"]  # the temp preview is not downloaded
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG)
    assert rows["broken.png"]["error"] == "broken.png is not a readable image: it is not a PNG, JPEG, WebP, GIF, " \
        "BMP or TIFF file" and rows["broken.png"]["prompt_id"] is None and rows["broken.png"]["outputs"] == []
    assert "node 4 DeepGenSampler" in rows["r.png"]["error"]
    assert rows["e.png"]["error"] == "DeepGenEditEncode (node 3) failed: RuntimeError: out of memory"
    assert "missing output" in rows["n.png"]["error"] and rows["n.png"]["outputs"] == []
    assert rows["n.png"]["output"] == "n.png"  # the planned name: the row's key, also for errors
    seeds = {i.input: i.seed for i in items}
    assert all(rows[k]["seed"] == seeds[k] and rows[k]["seed_base"] == 10 for k in rows)
    assert seeds["good.png"] == derive_seed(10, "good.png")
    lines = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["input"] for x in lines) == sorted(rows)
    # the server got the item's values; the upload name is the content hash (same bytes -> same name)
    sent = next(p for p in server.prompts.values() if p["3"]["inputs"]["prompt"] == "add snow")
    assert sent["4"]["inputs"]["seed"] == seeds["good.png"]
    assert sent["2"]["inputs"]["image"].startswith("deepgen-batch/")


def test_transient_failures_are_retried_with_backoff(tmp_path):
    items = make_inputs(tmp_path / "in", [("a.png", "x")])
    server = FakeServer(fail={"upload": 2})
    runner, sleeps = runner_for(tmp_path, [server], retries=3)
    (row,) = runner.run(items)
    assert row["status"] == "ok" and row["attempts"] == 3 and sleeps == [1.0, 2.0]


def test_gives_up_after_the_retries(tmp_path):
    items = make_inputs(tmp_path / "in", [("a.png", "x"), ("b.png", "y")])
    server = FakeServer(fail={"history": 10**6})
    runner, sleeps = runner_for(tmp_path, [server], retries=2, server_wait=0.0)  # 503s: give it up at once
    rows = runner.run(items)
    assert all(r["status"] == "error" and r["error"].startswith("gave up after 3 attempts: ")
               and "history: HTTP 503" in r["error"]
               for r in rows)
    assert len(server.cancelled) == 6  # each queued-but-abandoned prompt is cancelled on the server
    assert sorted(sleeps) == [1.0, 1.0, 2.0, 2.0]


def test_a_failing_server_hands_the_item_to_another(tmp_path):
    items = make_inputs(tmp_path / "in", [("a.png", "x")])
    down = FakeServer("http://down:1", load=0, fail={"queue_prompt": 10**6})
    up = FakeServer("http://up:1", load=3)
    runner, _ = runner_for(tmp_path, [down, up], retries=2)
    runner.scheduler.cooldown = 60.0  # the failed server stays out
    (row,) = runner.run(items)
    assert row["status"] == "ok" and row["server"] == "http://up:1" and row["attempts"] == 2


def test_scheduler_least_busy_and_slot_limit():
    a, b = FakeServer("http://a", load=5), FakeServer("http://b", load=1)
    s, stop = Scheduler([a, b], per_server=1), threading.Event()
    assert s.acquire(stop) is b  # less busy
    assert s.acquire(stop) is a  # b's slot is taken
    stop.set()
    with pytest.raises(Cancelled):
        s.acquire(stop)  # no free slot: waits until a release, or stop
    stop.clear()
    s.release(b, "p")
    assert s.acquire(stop) is b


def test_scheduler_counts_own_jobs_and_skips_dead_servers():
    a, b = FakeServer("http://a", load=2), FakeServer("http://b", load=0)
    s, stop = Scheduler([a, b], per_server=5, cooldown=60.0), threading.Event()
    picks = [s.acquire(stop).url for _ in range(4)]
    # score = load not ours + ours in flight: b 0,1,2 ; a 2 -> ties go to fewer of ours (a), then list order
    assert picks == ["http://b", "http://b", "http://a", "http://b"]
    dead = FakeServer("http://dead", fail={"queue_load": 10**6})
    s2 = Scheduler([dead], per_server=1, cooldown=60.0, server_wait=0.0)
    with pytest.raises(ServersGone, match="no ComfyUI server answered .* http://dead: queue_load: HTTP 503"):
        s2.acquire(stop)


def test_a_lost_prompt_is_queued_again_at_once(tmp_path):
    items = make_inputs(tmp_path / "in", [("a.png", "x"), ("b.png", "y")])
    server = FakeServer()
    server.lose = {"x": 1, "y": 1}
    runner, sleeps = runner_for(tmp_path, [server], retries=1)
    rows = runner.run(items)
    assert [r["status"] for r in rows] == ["ok", "ok"] and [r["attempts"] for r in rows] == [2, 2]
    assert sleeps == [] and server.cancelled == []  # no back-off, nothing to cancel: the server answers
    assert {r["prompt_id"] for r in rows}.isdisjoint(server.lost) and len(server.prompts) == 4
    server.lose = {"x": 10}  # lost on every attempt: counts against the retries
    runner, _ = runner_for(tmp_path, [server], retries=1)
    (row,) = runner.run(items[:1])
    assert row["status"] == "error" and row["error"].startswith("gave up after 2 attempts: http://fake:1 no longer "
                                                                "has the prompt (the server restarted")


def test_no_server_left_gives_error_rows_for_the_rest(tmp_path):
    items = make_inputs(tmp_path / "in", [("a.png", "x"), ("b.png", "y"), ("c.png", "z")])
    dead = FakeServer("http://dead:1", fail={"queue_load": 10**6})
    runner, _ = runner_for(tmp_path, [dead], retries=5, server_wait=0.0)
    rows = runner.run(items)
    assert len(rows) == 3 and all(r["status"] == "error" and r["attempts"] == 1 for r in rows)
    assert all(r["error"].startswith("not done: no ComfyUI server answered for 0 s (--server-wait): "
                                     "http://dead:1: queue_load: HTTP 503") for r in rows)
    assert len((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()) == 3


def test_results_never_replace_files_the_batch_did_not_make(tmp_path):
    items = make_inputs(tmp_path / "in", [("a.png", "x"), ("b.png", "y")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"mine")  # appeared after the plan's check, while the batch ran
    runner, _ = runner_for(tmp_path, [FakeServer()])
    rows = {r["input"]: r for r in runner.run(items)}
    assert rows["a.png"]["status"] == "ok" and (out / "b.png").read_bytes() == b"mine"
    assert rows["b.png"]["status"] == "error" and "would replace b.png, which deepgen-batch did not make" in \
        rows["b.png"]["error"] and "--overwrite" in rows["b.png"]["error"]
    assert not list(out.glob(".*.deepgen-part"))  # its temp file was removed
    runner, _ = runner_for(tmp_path, [FakeServer()], overwrite=True)
    (row,) = runner.run(items[1:])
    assert row["status"] == "ok" and (out / "b.png").read_bytes().startswith(PNG)
    # the batch's own earlier result may be replaced (a redo), found by path + sha256 in the manifest
    runner, _ = runner_for(tmp_path, [FakeServer()])
    (row,) = runner.run(items[:1])
    assert row["status"] == "ok"


def test_commit_writes_temp_then_row_then_renames(tmp_path, monkeypatch):
    items = make_inputs(tmp_path / "in", [("a.png", "x")])
    runner, _ = runner_for(tmp_path, [FakeServer()])
    seen = []
    real_append = runner.manifest.append

    def append(row):  # when the row is written, the result is complete under a temp name only
        seen.append((sorted(p.name for p in (tmp_path / "out").iterdir()), row["outputs"]))
        real_append(row)
    monkeypatch.setattr(runner.manifest, "append", append)
    (row,) = runner.run(items)
    (files, outputs), = seen
    assert outputs == ["a.png"] and "a.png" not in files and any(f.endswith(".deepgen-part") for f in files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "manifest.jsonl"]
    from deepgen_batch.manifest import sha256_file
    assert row["sha256"] == [sha256_file(tmp_path / "out" / "a.png")]


def test_manifest_resume_rules_and_torn_lines(tmp_path):
    m = Manifest(tmp_path / "manifest.jsonl")
    (tmp_path / "a.png").write_bytes(b"A")
    (tmp_path / "c.png").write_bytes(b"C")
    from deepgen_batch.manifest import sha256_file
    a_sha = sha256_file(tmp_path / "a.png")
    m.append({"input": "a.png", "output": "a.png", "fingerprint": "f1", "status": "ok", "outputs": ["a.png"],
              "sha256": [a_sha]})
    m.append({"input": "b.png", "output": "b.png", "fingerprint": "f2", "status": "ok", "outputs": ["b.png"],
              "sha256": ["0" * 64]})
    m.append({"input": "c.png", "output": "c.png", "fingerprint": "f3", "status": "ok", "outputs": ["c.png"],
              "sha256": ["0" * 64]})
    with open(m.path, "a") as f:
        f.write('{"input": "d.png", "output": "d.png", "status": "o')  # a line cut short by a kill
    latest = m.latest()
    assert Manifest.is_done(latest[("a.png", "a.png")], tmp_path)  # finished, whatever today's settings are ...
    a_row = latest[("a.png", "a.png")]
    assert Manifest.changed(a_row, "other") and not Manifest.changed(a_row, "f1")  # ... redone only when asked
    assert not Manifest.is_done(latest[("b.png", "b.png")], tmp_path)  # result gone
    assert not Manifest.is_done(latest[("c.png", "c.png")], tmp_path)  # result changed since
    assert ("d.png", "d.png") not in latest
    assert m.made() == {"a.png": {a_sha}, "b.png": {"0" * 64}, "c.png": {"0" * 64}}
    assert m.owners() == {"a.png": "a.png", "b.png": "b.png", "c.png": "c.png"}
    assert m.repair(log=lambda t: None) == 1
    lines = m.path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x) for x in lines) and m.path.read_text().endswith("\n")
    m.append({"input": "d.png", "output": "d.png", "status": "error"})  # lands on a line of its own
    assert [r["input"] for r in m.rows()] == ["a.png", "b.png", "c.png", "d.png"] and m.repair() == 0
    with open(m.path, "a") as f:
        f.write('{"input": "e.png"}')  # whole, but the kill came before its newline
    assert m.repair() == 0 and m.path.read_text().endswith('{"input": "e.png"}\n')
    made = m.made()
    assert Manifest.made_here(made, "a.png", tmp_path / "a.png") and not Manifest.made_here(made, "c.png",
                                                                                             tmp_path / "c.png")
    old = Manifest(tmp_path / "v01.jsonl")  # deepgen-batch 0.1 rows: no sha256; their files count as made
    old.append({"input": "c.png", "output": "c.png", "status": "ok", "outputs": ["c.png"]})
    assert Manifest.made_here(old.made(), "c.png", tmp_path / "c.png")


def test_cli_resume_skips_done_items(tmp_path, monkeypatch, capsys):
    make_inputs(tmp_path / "in", [(f"i{k}.png", "") for k in range(5)], plan=False)
    server = FakeServer()
    monkeypatch.setattr(cli, "ComfyClient", lambda url, headers: server)
    monkeypatch.setattr(cli, "preflight", lambda clients, wf, log: clients)
    monkeypatch.setattr(cli, "Settings", functools.partial(Settings, poll=0.001))
    base = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-i", "edit", "--no-progress", "--retry-wait", "0"]
    assert cli.main(base + ["--limit", "2"]) == 0
    assert len(server.prompts) == 2
    assert cli.main(base) == 0
    assert len(server.prompts) == 5  # only the 3 missing ones ran
    out = capsys.readouterr()
    assert "2 already done" in out.err and "3 ok, 0 failed, 2 skipped" in out.out
    assert cli.main(base) == 0 and "nothing to do" in capsys.readouterr().out
    (tmp_path / "out" / "i0.png").unlink()  # a deleted result is made again
    assert cli.main(base) == 0 and len(server.prompts) == 6
    capsys.readouterr()
    other = base + ["--instruction", "other edit"]
    assert cli.main(other) == 0 and len(server.prompts) == 6  # a finished picture is only redone when asked
    out = capsys.readouterr()
    assert "nothing to do" in out.out and "5 finished item(s) would be made differently now" in out.err
    assert "pass --overwrite to redo them: i0.png, i1.png" in out.err
    assert cli.main(other + ["--overwrite", "--limit", "2"]) == 0 and len(server.prompts) == 8
    assert "redoing them (--overwrite)" in capsys.readouterr().err
    assert cli.main(other) == 0 and len(server.prompts) == 8 and "3 finished item(s)" in capsys.readouterr().err
    (tmp_path / "in" / "i1.png").write_bytes(b"garbage")  # changed since: its finished result stays
    assert cli.main(other + ["--overwrite"]) == 1  # ... until asked: the unreadable file fails, exit status 1
    assert "FAILED i1.png: i1.png is not a readable image" in capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows if r["input"] == "i1.png"][-1] == "error"
    assert (tmp_path / "out" / "i1.png").exists()  # the picture made before stays


# ------------------------------------------------------------------ a disk that fills up or is read-only

def _cli_against(monkeypatch, server):
    monkeypatch.setattr(cli, "ComfyClient", lambda url, headers: server)
    monkeypatch.setattr(cli, "preflight", lambda clients, wf, log: clients)
    monkeypatch.setattr(cli, "Settings", functools.partial(Settings, poll=0.001))


@pytest.mark.parametrize("mode", ["full-result", "full-row"])
def test_disk_full_mid_run_stops_keeps_what_is_done_and_resumes(tmp_path, monkeypatch, capsys, mode):
    from disk_faults import faulty_disk

    make_inputs(tmp_path / "in", [(f"i{k}.png", "") for k in range(5)], plan=False)
    server = FakeServer()
    _cli_against(monkeypatch, server)
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "-o", str(out), "-i", "edit", "--no-progress", "--per-server", "1"]
    with faulty_disk(out, mode, after=2):
        assert cli.main(args) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err
    assert "the 2 result(s) finished before it are kept" in err and "run the same command again" in err
    assert len(server.prompts) == 3  # the third prompt ran but could not be kept; nothing was queued after it
    files = sorted(p.name for p in out.iterdir())
    assert files == ["i0.png", "i1.png", "manifest.jsonl"], files  # no temp file, no half result
    text = (out / "manifest.jsonl").read_text()
    assert text.endswith("\n") and [json.loads(x)["status"] for x in text.splitlines()] == ["ok", "ok"]  # no torn row
    kept = {n: (out / n).read_bytes() for n in ("i0.png", "i1.png")}

    assert cli.main(args) == 0  # space freed: the same command does the rest
    captured = capsys.readouterr()
    assert "3 ok, 0 failed, 2 skipped" in captured.out
    assert {n: (out / n).read_bytes() for n in kept} == kept
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["input"] for r in rows) == [f"i{k}.png" for k in range(5)] and {r["status"] for r in rows} == {"ok"}


def test_read_only_output_or_manifest_is_refused_before_anything_is_queued(tmp_path, monkeypatch, capsys):
    from disk_faults import faulty_disk

    make_inputs(tmp_path / "in", [("a.png", "")], plan=False)
    server = FakeServer()
    _cli_against(monkeypatch, server)
    out, shelf = tmp_path / "out", tmp_path / "shelf"
    out.mkdir()
    shelf.mkdir()
    args = [str(tmp_path / "in"), "-o", str(out), "-i", "edit", "--no-progress"]
    with faulty_disk(out, "read-only"):
        assert cli.main(args) == 4
    err = capsys.readouterr().err
    assert f"could not write {out}: Read-only file system" in err and "Nothing was queued" in err
    with faulty_disk(shelf, "read-only"):  # --manifest on a read-only mount, results folder writable
        assert cli.main(args + ["--manifest", str(shelf / "m.jsonl")]) == 4
    assert f"could not write {shelf}" in capsys.readouterr().err
    (shelf / "m.jsonl").write_text('{"input": "a.png", "output": "../out/a.png", "status": "o')  # torn: needs repair
    with faulty_disk(shelf, "read-only"):
        assert cli.main(args + ["--manifest", str(shelf / "m.jsonl")]) == 4
    assert "Traceback" not in capsys.readouterr().err
    assert server.prompts == {} and sorted(os.listdir(out)) == []


def test_a_failed_manifest_write_is_cut_back_and_ends_the_appends(tmp_path):
    from disk_faults import faulty_disk

    from deepgen_batch.manifest import StorageError

    m = Manifest(tmp_path / "manifest.jsonl")
    with faulty_disk(tmp_path, "full-row", after=1):
        m.append({"input": "a.png", "status": "ok"})
        with pytest.raises(StorageError, match=r"could not write .*manifest\.jsonl: No space left on device"):
            m.append({"input": "b.png", "status": "ok"})
    assert m.path.read_text().count("\n") == 1 and [r["input"] for r in m.rows()] == ["a.png"]  # half a row: gone
    with pytest.raises(StorageError):  # space back or not: nothing more is appended in this run
        m.append({"input": "c.png", "status": "ok"})
    assert [r["input"] for r in m.rows()] == ["a.png"]


def test_manifest_of_deepgen_batch_0_1_keeps_its_seeds_and_pictures(tmp_path, monkeypatch, capsys):
    """Rows written before seeds came from names (seed = base + index, no seed_base): a new file in the
    folder, or the upgrade itself, must not make them look changed, let alone redo them."""
    import dataclasses

    from deepgen_batch.runner import prepare

    make_inputs(tmp_path / "in", [("b.png", ""), ("d.png", "")], plan=False)
    server = FakeServer()
    _cli_against(monkeypatch, server)
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "-o", str(out), "-i", "edit", "--no-progress"]
    assert cli.main(args) == 0
    wf, old = Workflow(builtin()), []
    items = {i.input: i for i in build_plan(tmp_path / "in", None, instruction="edit")}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        del row["seed_base"]
        row["seed"] = i = sorted(items).index(row["input"])  # 0.1: base 0 + index
        row["fingerprint"] = prepare(dataclasses.replace(items[row["input"]], seed=i), wf).fingerprint
        old.append(json.dumps(row))
    (out / "manifest.jsonl").write_text("\n".join(old) + "\n")
    pictures = {n: (out / n).read_bytes() for n in ("b.png", "d.png")}
    capsys.readouterr()

    make_inputs(tmp_path / "in", [("a.png", ""), ("c.png", "")], plan=False)
    assert cli.main(args) == 0 and len(server.prompts) == 4  # only the two new files ran
    captured = capsys.readouterr()
    assert "2 ok, 0 failed, 2 skipped" in captured.out and "made differently" not in captured.err
    assert {n: (out / n).read_bytes() for n in pictures} == pictures
    seeds = {r["input"]: r["seed"] for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert seeds == {"b.png": 0, "d.png": 1, "a.png": derive_seed(0, "a.png"), "c.png": derive_seed(0, "c.png")}


def test_manifest_where_a_result_goes_is_refused(tmp_path, capsys):
    make_inputs(tmp_path / "in", [("a.png", ""), ("b.jpg", "")], plan=False)
    out = tmp_path / "out"
    for manifest in (out / "b.png", out / "B.PNG", out / "a.png" / "m.jsonl"):
        assert cli.main([str(tmp_path / "in"), "-o", str(out), "-i", "x", "--manifest", str(manifest)]) == 2
        assert f"--manifest {manifest} is where the result of" in capsys.readouterr().err
    assert not out.exists()
