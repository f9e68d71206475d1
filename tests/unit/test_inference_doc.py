"""Citations of docs/inference.md resolve to its headings, and none of the former external specification is left.

Code, tests and docs cite the document as `docs/inference.md#<anchor>` (more sections of the same citation as
`, #<anchor>`); markdown files link `inference.md#<anchor>`. An anchor is the GitHub anchor of a heading. The old
forms ("spec §1.5", "pitfall 14", a bare "§2.1") pointed at a document outside the repository and must not come
back: a contributor who copies one gets this test's message with the fix.
"""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "inference.md"
SCANNED = ("__init__.py", "README.md", "pyproject.toml", "requirements.txt", "deepgen_model", "nodes",
           "deepgen_batch", "scripts", "bench", "web", "docs", "example_workflows", "locales", "tests", ".ci")
TEXT_SUFFIXES = {".py", ".md", ".js", ".mjs", ".sh", ".json", ".txt", ".toml", ".yaml", ".yml", ".css", ".html", ""}
SKIPPED_DIRS = {"node_modules", "__pycache__", ".pytest_cache"}

CITATION = re.compile(r"inference\.md((?:#[\w-]+)(?:\s*[,;]\s*#[\w-]+)*)")
SAME_FILE_LINK = re.compile(r"\]\(#([\w-]+)\)")
OLD_STYLE = (
    re.compile(r"\bspec(?:\.md)?`?\s*§"),  # "spec §1.5", "...-spec.md §1-§4"
    re.compile(r"\bpitfalls?\s+\d", re.IGNORECASE),  # "pitfall 14", "pitfalls 1, 4, 5"
    re.compile(r"deepgen-inference-spec"),  # the external document's file name
    re.compile(r"\bthe spec\b|\bspec's\b", re.IGNORECASE),  # prose that points at it
    re.compile(r"inference\.md`?\s*§"),  # "docs/inference.md §dit": a section is named by its #anchor
)
SECTION_SIGN = re.compile(r"§\s*(\d+)")
# a § after one of these on the same line is a section of that other document, not of the former spec
OTHER_DOCUMENT = re.compile(r"[\w./-]+\.md\b|engine-feasibility|harness")
FORMER_SPEC = ("inference.md", "deepgen-inference-spec.md")
NUMBERED_HEADING = re.compile(r"^#+\s+(\d+)[.\s]", re.MULTILINE)
# a markdown link to a section of docs/inference.md, e.g. [pitfall 3](inference.md#pitfall-3): its text may say "pitfall 3"
LINK_TO_SECTION = re.compile(r"\[[^\]]*\]\((?:[\w./-]*inference\.md)?#[\w-]+\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(markdown: str) -> list[str]:
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
            out.append(m.group(1))
    return out


def citations(text: str) -> list[tuple[int, str]]:
    """(line, anchor) of every citation of inference.md in `text`."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in CITATION.finditer(line):
            found += [(n, a) for a in re.findall(r"#([\w-]+)", m.group(1))]
    return found


def old_style(text: str, own_sections: set[str] = frozenset(), is_doc: bool = False) -> list[tuple[int, str]]:
    """(line, text) of every citation of the former external spec. A bare § is one too, unless an other
    document is named before it on its line or it is one of the file's own numbered sections. Links to a
    section of docs/inference.md, and (is_doc) the document's own headings ("Pitfall 3"), are not."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        if is_doc and line.startswith("#"):
            continue
        line = LINK_TO_SECTION.sub("", line)
        if any(p.search(line) for p in OLD_STYLE):
            found.append((n, line.strip()))
            continue
        for m in SECTION_SIGN.finditer(line):
            named = OTHER_DOCUMENT.findall(line[:m.start()])
            other_document = bool(named) and not named[-1].endswith(FORMER_SPEC)
            own_section = not named and m.group(1) in own_sections
            if other_document or own_section:
                continue
            found.append((n, line.strip()))
            break
    return found


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        root = REPO / name
        candidates = [root] if root.is_file() else sorted(root.rglob("*")) if root.is_dir() else []
        files += [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and not SKIPPED_DIRS & set(p.relative_to(REPO).parts) and p.resolve() != Path(__file__).resolve()]
    return files


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def test_doc_headings_have_unique_anchors():
    anchors = [slug(h) for h in headings(_read(DOC))]
    assert {"components", "inference", "checkpoints", "pitfalls", "unknowns"} <= set(anchors)
    assert sorted(a for a in set(anchors) if anchors.count(a) > 1) == []
    assert {f"pitfall-{i}" for i in range(1, 23)} <= set(anchors)


def test_every_citation_names_a_heading_of_docs_inference_md():
    anchors = {slug(h) for h in headings(_read(DOC))}
    unresolved, citing = [], set()
    for path in scanned_files():
        text = _read(path)
        found = citations(text) + ([(n, a) for n, line in enumerate(text.splitlines(), 1)
                                    for a in SAME_FILE_LINK.findall(line)] if path == DOC else [])
        if found:
            citing.add(path.relative_to(REPO).parts[0])
        unresolved += [f"{path.relative_to(REPO)}:{n}: #{a}" for n, a in found if a not in anchors]
    assert {"deepgen_model", "nodes", "tests", "docs"} <= citing  # the scan reaches the citing files
    assert unresolved == [], ("citations naming no heading of docs/inference.md (anchors are GitHub's: lower case, "
                              "punctuation dropped, spaces as hyphens):\n" + "\n".join(unresolved))


def test_no_citation_of_the_former_external_spec_is_left():
    left = []
    for path in scanned_files():
        text = _read(path)
        own = set(NUMBERED_HEADING.findall(text)) if path.suffix == ".md" else set()
        left += [f"{path.relative_to(REPO)}:{n}: {line}" for n, line in old_style(text, own, path == DOC)]
    assert left == [], ("old-style citations of the external inference spec; cite docs/inference.md#<anchor> "
                        "instead (e.g. 'spec §1.5' -> docs/inference.md#dit, 'pitfall 14' -> "
                        "docs/inference.md#pitfall-14):\n" + "\n".join(left))


def test_the_checks_catch_what_they_are_meant_to():
    assert slug("Pitfall 14") == "pitfall-14" and slug("In ComfyUI") == "in-comfyui"
    assert slug("DeepGen 1.0 inference, as this pack implements it") == "deepgen-10-inference-as-this-pack-implements-it"
    assert citations("x (docs/inference.md#dit, #pitfall-14; #scheduler) y\nsee [a](inference.md#vae)") == [
        (1, "dit"), (1, "pitfall-14"), (1, "scheduler"), (2, "vae")]
    assert citations("the doc: docs/inference.md, or docs/inference.md#<anchor>") == []
    old = ["(spec §1.5)", "spec §2.1-§2.5", "(pitfall 3)", "pitfalls 17-18", "Pitfall 1: x", "# §2.2: sizes",
           "../shared/docs/deepgen-inference-spec.md", "taken from the spec", "docs/inference.md §2",
           "docs/inference.md §dit"]
    assert [n for n, _ in old_style("\n".join(old))] == list(range(1, len(old) + 1))
    fine = ["engine-feasibility §3", "(../shared/docs/comfyui-test-harness.md §1)", "harness doc §7",
            "docs/performance.md §2", "docs/inference.md#pitfall-3", "FileSpec(part)", "spec.loader"]
    assert old_style("\n".join(fine)) == []
    assert old_style("as in §2 above", {"2"}) == [] and old_style("as in §3 above", {"2"}) == [(1, "as in §3 above")]
    assert old_style("see [pitfall 3](#pitfall-3) and [pitfall 4](inference.md#pitfall-4)") == []
    assert old_style("### Pitfall 3", is_doc=True) == [] and old_style("### Pitfall 3") == [(1, "### Pitfall 3")]
