"""ComfyUI node classes of the pack (V3 schema), collected from one module per node family.

loaders.py (the five loader nodes), encode.py (prompts and references -> CONDITIONING), sampling.py
(sampler and scheduler); beside them comfy_models.py (DeepGen's models as ComfyUI objects), comfy_ops.py
(their comfy.ops layers and compute dtypes), memory.py (the out-of-memory guard), paths.py (the model lists),
routes.py (the web extension's HTTP routes) and sample_inputs.py (the edit templates' pictures in ComfyUI's input
folder).
"""
import folder_paths
from comfy_api.latest import ComfyExtension, io

from . import comfy_compat, encode, loaders, sampling
from .sample_inputs import install_sample_inputs
from . import routes  # noqa: F401  (the web extension's /deepgen/* HTTP routes)

comfy_compat.keep_legacy_lora_names()

NODES: list[type[io.ComfyNode]] = [*loaders.NODES, *encode.NODES, *sampling.NODES]


class DeepGenExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DeepGenExtension:
    # here, not in on_load: ComfyUI 0.3.75 never calls on_load
    install_sample_inputs(folder_paths.get_input_directory())
    return DeepGenExtension()
