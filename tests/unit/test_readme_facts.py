"""What README.md (and docs/weights.md) tell a newcomer about the main command matches the code.

The first --demo used to be quoted as "~1-2 minutes", "8-9 minutes" and "a few minutes" in three places;
the README never said where the main command looks for weights; exit statuses were listed in one place
only. Each stated number or path is checked here against the scripts that produce it.
"""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
FIRST_DEMO = "2–8 minutes"  # the first --demo, setup included (measured: README, Quick start)


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


QUICK_START = section(README, "Quick start")
WHERE_QUOTED = {"README.md (Quick start)": QUICK_START,
                "scripts/run_example.sh": (REPO / "scripts" / "run_example.sh").read_text(encoding="utf-8"),
                "scripts/run_example.py": (REPO / "scripts" / "run_example.py").read_text(encoding="utf-8")}


def test_the_first_demo_is_quoted_with_one_figure_everywhere():
    for where, text in WHERE_QUOTED.items():
        quoted = re.findall(r"[~≈]?\d[\d½ .,–-]*\s*minutes?\b", text)
        assert set(quoted) <= {FIRST_DEMO}, (where, quoted)
        assert "a few minutes" not in text, where
    assert QUICK_START.count(FIRST_DEMO) >= 2 and FIRST_DEMO in WHERE_QUOTED["scripts/run_example.sh"]
    # the measurements given with it lie inside the figure
    measured = [float(m) + (0.5 if half else 0) + (float(s) / 60 if s else 0)
                for m, half, s in re.findall(r"(\d+)( ½)?(?:–\d+)? min(?: (\d+) s)?\b", QUICK_START)]
    measured += [float(m) for m in re.findall(r"–(\d+) min\b", QUICK_START)]
    assert measured and all(2 <= m <= 8 for m in measured), measured


def test_the_default_weights_folder_is_stated_where_the_weights_table_is():
    """README's path = run_example.sh's $DEEPGEN_HOME default + its --base-dir + the helper's models/deepgen."""
    weights = section(README, "Weights: what to download and where it goes")
    assert "`~/.cache/comfyui-deepgen/workspace/models/deepgen/`" in weights
    assert "`$DEEPGEN_HOME/workspace/models/deepgen/`" in weights and "`--models DIR` overrides" in weights
    shell = WHERE_QUOTED["scripts/run_example.sh"]
    assert 'DEEPGEN_HOME="${DEEPGEN_HOME:-$HOME/.cache/comfyui-deepgen}"' in shell
    assert 'BASE="${BASE:-$DEEPGEN_HOME/workspace}"' in shell
    assert 'models = a.models or home / "models" / "deepgen"' in WHERE_QUOTED["scripts/run_example.py"]


def _statuses(text: str) -> dict[int, str]:
    return {int(code): what for code, what in re.findall(r"\*\*(\d)\*\* ([^,*]+)", text)}


def test_exit_statuses_in_the_readme_are_the_scripts():
    from deepgen_model import download as dl

    readme = _statuses(QUICK_START)
    doc = (REPO / "scripts" / "run_example.py").read_text(encoding="utf-8").split('"""')[1]
    helper = {int(c) for c in re.findall(r"(?:^|; |\n)(\d) ", doc.split("Exit status: ")[1])}
    assert set(readme) == helper == {0, 1, 2, 3, 4, 5}, (readme, helper)
    assert readme[3].strip() == "weights missing" and "download" in readme[4] and "CUDA" in readme[5]
    install_torch = (REPO / ".ci" / "install-torch.py").read_text(encoding="utf-8")
    assert "EXIT_CUDA_ONLY = 5" in install_torch and "DEEPGEN_ALLOW_CUDA_TORCH" in install_torch
    assert "DEEPGEN_ALLOW_CUDA_TORCH=1" in QUICK_START and "DEEPGEN_TORCH_INDEX" in QUICK_START
    weights_doc = (REPO / "docs" / "weights.md").read_text(encoding="utf-8")
    stated = {int(c) for c in re.findall(r"(\d) = ", weights_doc.split("- Exit status:")[1].split("\n- ")[0])}
    assert stated == {0, dl.EXIT_INCOMPLETE, dl.EXIT_USAGE, dl.EXIT_DOWNLOAD_FAILED}
