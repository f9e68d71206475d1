"""ComfyUI-DeepGen: ComfyUI entry point (V3: `comfy_entrypoint`).

ComfyUI imports this folder as a package under an arbitrary module name. The node classes (and
through them ComfyUI's own modules) are imported only when a running ComfyUI loaded us, which
has always imported ``folder_paths`` by then; a plain import anywhere else (packaging tools,
registry scanners, tests) succeeds and registers nothing. Import errors inside ComfyUI are not
swallowed: ComfyUI must report them as IMPORT FAILED.
"""
import sys

WEB_DIRECTORY = "./web"

if "folder_paths" in sys.modules:
    from .nodes import comfy_entrypoint  # noqa: F401

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
else:
    __all__ = ["WEB_DIRECTORY"]
