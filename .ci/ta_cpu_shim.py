"""Let PyPI's (CUDA-linked) torchaudio import beside the CPU-only torch wheel.

ComfyUI 0.28 imports torchaudio at start (comfy/sd.py -> audio VAE). PyPI's torchaudio wheel links
its native extension against libc10_cuda.so, which the CPU torch wheel lacks, so `import torchaudio`
raises OSError. torchaudio already runs without its native extension when the library file is absent;
this shim makes a library that is present but cannot load count as absent, so the pure-torch parts
(transforms, functional) import and work. Installed through a `.pth` line:
`import ta_cpu_shim; ta_cpu_shim.install()`. Harmless where the native extension loads.
Test infrastructure only: never shipped with the pack."""
import importlib.abc
import importlib.machinery
import sys

_TARGET = "torchaudio._extension.utils"


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        strict = module._load_lib

        def _load_lib(lib):
            try:
                return strict(lib)
            except OSError:  # e.g. libc10_cuda.so missing: run without the native extension
                return False

        module._load_lib = _load_lib


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install():
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
