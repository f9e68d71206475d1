"""deepgen-batch: queue image edits on one or more ComfyUI servers over the HTTP API.

Standard library only (tqdm optional for progress bars); never imports torch, numpy, ComfyUI or
deepgen_model, so it runs on any machine that can reach the servers. Entry point: ``deepgen_batch.cli:main``
(``python -m deepgen_batch``). User guide: docs/batch.md.
"""
__version__ = "0.2.0"  # 0.2: seeds from item names (docs/batch.md, Seeds)
