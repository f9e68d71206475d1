"""DeepGen 1.0 inference engine: plain PyTorch + transformers + diffusers, no ComfyUI needed.

Heavy imports are deferred so `import deepgen_model` stays cheap (the batch client and the
converter's --help must not pay for torch).
"""
__version__ = "0.1.0"

_EXPORTS = {
    "DeepGenPipeline": ".pipeline",
    "DeepGenOutput": ".pipeline",
    "DeepGenConditioning": ".conditioning",
    "DeepGenTransformer": ".transformer",
    "SCBBridge": ".bridge",
    "BridgeConfig": ".bridge",
    "DeepGenError": ".errors",
    "DeepGenInputError": ".errors",
    "DeepGenLoadError": ".errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
