"""ComfyUI node classes of the pack (V3 schema), collected from one module per node family."""
from comfy_api.latest import ComfyExtension, io

from . import checkpoint, dit, encode, sampling, vlm
from . import routes  # noqa: F401  (the web extension's /deepgen/* HTTP routes)

NODES: list[type[io.ComfyNode]] = [*checkpoint.NODES, *vlm.NODES, *dit.NODES, *encode.NODES, *sampling.NODES]


class DeepGenExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DeepGenExtension:
    return DeepGenExtension()
