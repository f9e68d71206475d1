"""The edit templates' sample pictures (example_workflows/input/) reach ComfyUI's input folder.

ComfyUI's Load Image reads only from its input folder, so an edit template opened from the template browser
(or an API twin queued as it is) would otherwise show an empty Load Image and fail with "Invalid image file".
The pack copies each sample there when it loads, under its own name, and only when no file of that name
exists: a user's file is never replaced (the copy is an exclusive create, so even a file that appears
meanwhile is kept). Nothing here may stop the pack from loading: a read-only or missing folder is logged.
"""
from __future__ import annotations

import filecmp
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parents[1] / "example_workflows" / "input"


def _same(a, b) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:  # e.g. a folder of that name
        return False


def install_sample_inputs(input_dir) -> list[str]:
    """Copies every sample missing from `input_dir` there; returns the names it wrote."""
    written = []
    for src in sorted(SAMPLES.glob("*.png")):
        dst = os.path.join(input_dir, src.name)
        try:
            data = src.read_bytes()
            with open(dst, "xb") as f:
                try:
                    f.write(data)
                except BaseException:
                    f.close()
                    os.unlink(dst)  # ours, half written (e.g. a full disk): never leave a broken picture
                    raise
            written.append(src.name)
        except FileExistsError:
            if not _same(src, dst):
                log.info("DeepGen: input/%s is not the pack's sample picture; it is kept, and the DeepGen edit "
                         "templates will open it", src.name)
        except OSError as e:
            log.warning("DeepGen: could not copy the sample picture %s into ComfyUI's input folder (%s); the edit "
                        "templates need it there: copy %s by hand or pick your own image", src.name, e, src)
    if written:
        log.info("DeepGen: copied the edit templates' sample pictures into %s: %s", input_dir, ", ".join(written))
    return written
