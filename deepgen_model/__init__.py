"""DeepGen 1.0 inference engine: plain PyTorch + transformers + diffusers, no ComfyUI needed.

Heavy imports are deferred so `import deepgen_model` stays cheap (the batch client and the
converter's --help must not pay for torch).
"""
import logging as _logging

__version__ = "0.1.0"

# diffusers imports bitsandbytes (when installed) as soon as any model class is imported, and on a CPU
# with AVX512-BF16 bitsandbytes then warns, once per process, that it could not fetch an optional
# Hub kernel for its 4-bit CPU matmul ("Failed to load CPU gemm_4bit_forward from kernels-community:
# No module named 'kernels'. Please make sure you already `pip install kernels` ..."). It is printed at
# every start, whether or not a quantized VLM is ever asked for, and even then it is only an optional
# speed-up (a Hub kernel for NF4 matmuls on such CPUs; bitsandbytes' own CPU path works without it), so
# it is noise in every log (ComfyUI's, the demo's, the benchmarks'). Exactly that record is dropped, on exactly
# that logger; everything else bitsandbytes says still shows. Installed here, before anything of ours
# imports diffusers: a Logger filter applies to records logged later, whether or not bitsandbytes is
# imported yet. tests/unit/test_quiet_logs.py fails if the text or the logger stops matching.
BNB_KERNELS_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_NOISE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_bnb_kernels_noise(record: _logging.LogRecord) -> bool:
    return not str(record.msg).startswith(BNB_KERNELS_NOISE)


_bnb_logger = _logging.getLogger(BNB_KERNELS_LOGGER)
if not any(getattr(f, "__name__", "") == _not_bnb_kernels_noise.__name__ for f in _bnb_logger.filters):
    _bnb_logger.addFilter(_not_bnb_kernels_noise)  # once, even if the pack is imported under two names

# An 8-bit VLM on a CPU: bitsandbytes warns "MatMul8bitLt: inputs will be cast from torch.float32 to float16
# during quantization" at every quantized matmul (245 lines for one run of the 8-bit template). It is worth
# saying once per process (the 8-bit path computes in fp16 there), so the first record passes, marked as
# said once, and its repeats are dropped. tests/unit/test_quiet_logs.py fails if the text or logger changes.
BNB_CAST_LOGGER = "bitsandbytes.autograd._functions"
BNB_CAST_NOTICE = "MatMul8bitLt: inputs will be cast"


class _OnceBnbCastNotice:
    def __init__(self):
        self.said = False

    def filter(self, record: _logging.LogRecord) -> bool:
        if not str(record.msg).startswith(BNB_CAST_NOTICE):
            return True
        if self.said:
            return False
        self.said = True
        record.msg = f"{record.msg} (said once per process; DeepGen hides the repeats)"
        return True


_cast_logger = _logging.getLogger(BNB_CAST_LOGGER)
if not any(type(f).__name__ == _OnceBnbCastNotice.__name__ for f in _cast_logger.filters):
    _cast_logger.addFilter(_OnceBnbCastNotice())

_EXPORTS = {
    "DeepGenPipeline": ".pipeline",
    "DeepGenOutput": ".pipeline",
    "DeepGenConditioning": ".conditioning",
    "DeepGenTransformer": ".transformer",
    "SCBConnector": ".scb",
    "SCBConfig": ".scb",
    "DeepGenError": ".errors",
    "DeepGenInputError": ".errors",
    "DeepGenLoadError": ".errors",
}
__all__ = list(_EXPORTS)
# Older names of public classes (docs/architecture.md, "One vocabulary"): still importable, with a warning.
_DEPRECATED = {"SCBBridge": "SCBConnector", "BridgeConfig": "SCBConfig"}


def __getattr__(name):
    if name in _DEPRECATED:
        import warnings

        warnings.warn(f"deepgen_model.{name} is deprecated: use deepgen_model.{_DEPRECATED[name]}",
                      DeprecationWarning, stacklevel=2)
        name = _DEPRECATED[name]
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
