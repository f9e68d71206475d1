"""ComfyUI node classes of the pack, collected from one module per node family."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
