"""Let PyPI's (CUDA-linked) torchvision import beside the CPU-only torch wheel.

On the first `import torchvision`, try to load torchvision's native `_C` extension; only if that
fails, define the `torchvision::nms` / `qnms` operator schemas in Python, with a pure-torch CPU
kernel for `nms`, so that torchvision's pure-Python parts import. Installed through a `.pth` line:
`import tv_cpu_shim; tv_cpu_shim.install()`. Harmless where the native extension loads.
Test infrastructure only: never shipped with the pack."""
import glob
import importlib.abc
import importlib.machinery
import os
import sys

_LIB = None


def _nms_cpu(dets, scores, iou_threshold):
    import torch

    if dets.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        if rest.numel() == 0:
            break
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou_threshold]
    return torch.stack(keep).to(torch.long)


def _prepare(search_locations):
    global _LIB
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return  # already defined
    except RuntimeError:
        pass
    for d in search_locations or []:
        for so in glob.glob(os.path.join(d, "_C*.so")):
            try:
                torch.ops.load_library(so)
                return  # the native extension works here: leave torchvision alone
            except OSError:
                pass
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.impl("nms", _nms_cpu, "CPU")


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is not None:
            _prepare(spec.submodule_search_locations)
        return None


def install():
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
