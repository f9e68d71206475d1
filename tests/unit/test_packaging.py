"""Registry metadata, dependency hygiene, licence, and the ComfyUI entry point outside ComfyUI."""
import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirements(lines) -> dict[str, str]:
    """{normalised name: specifier} of requirement lines (comments and blanks dropped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", line)
            assert m, f"unparsable requirement {line!r}"
            out[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[3].replace(" ", "")
    return out


def test_project_metadata():
    project = PYPROJECT["project"]
    assert project["name"] and len(project["name"]) <= 100
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?", project["version"]), project["version"]
    assert project["license"] == {"file": "LICENSE"}
    assert project["requires-python"].startswith(">=3.")
    assert project["dependencies"]
    assert project["urls"]["Repository"].startswith("https://")


def test_comfy_registry_metadata():
    comfy = PYPROJECT["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert isinstance(comfy.get(key), str) and comfy[key], key
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])


def test_dependencies_mirror_requirements():
    req = _requirements((REPO / "requirements.txt").read_text().splitlines())
    deps = _requirements(PYPROJECT["project"]["dependencies"])
    assert deps == req


def test_torch_never_pinned():
    # ComfyUI owns torch (and its CUDA build); a pin here would make pip replace the user's torch
    for deps in (_requirements((REPO / "requirements.txt").read_text().splitlines()),
                 _requirements(PYPROJECT["project"]["dependencies"])):
        assert not {"torch", "torchvision", "torchaudio"} & set(deps)


def test_license_is_apache2():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "limitations under the License." in text


def test_engine_never_imports_comfy():
    # deepgen_model/ is the ComfyUI-free engine (usable from plain Python, testable without ComfyUI)
    comfy_modules = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes",
                     "execution", "server", "latent_preview", "node_helpers"}
    sources = sorted((REPO / "deepgen_model").rglob("*.py"))
    assert sources
    for src in sources:
        for node in ast.walk(ast.parse(src.read_text(), str(src))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] in comfy_modules]
            assert not bad, f"{src.relative_to(REPO)}:{node.lineno} imports {bad}"


def test_entry_point_imports_outside_comfyui():
    # as ComfyUI would, under an arbitrary package name, but without ComfyUI: imports, registers nothing
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('some_pack_name', {str(REPO / '__init__.py')!r},"
        f" submodule_search_locations=[{str(REPO)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod)\n"
        "assert not getattr(mod, 'NODE_CLASS_MAPPINGS', None) and not hasattr(mod, 'comfy_entrypoint'), dir(mod)\n"
        "assert mod.WEB_DIRECTORY == './web'\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'torch')], 'heavy import'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
