"""ComfyUI-DeepGen: ComfyUI entry point (V1 registration).

ComfyUI imports this folder as a package under an arbitrary module name. The node classes (and
through them ComfyUI's own modules) are imported only when a running ComfyUI loaded us, which
has always imported ``folder_paths`` by then; a plain import anywhere else (packaging tools,
registry scanners, tests) succeeds and exports empty mappings. Import errors inside ComfyUI are
not swallowed: ComfyUI must report them as IMPORT FAILED.
"""
import sys

WEB_DIRECTORY = "./web"

if "folder_paths" in sys.modules:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
