"""HTTP routes of the web extension (web/): the exact VLM prompt strings and size presets, from the engine.

POST /deepgen/prompt_preview (the pack's only route that takes a body: at most MAX_BODY bytes as sent and as
decoded, whatever its Content-Encoding) builds the strings with deepgen_model.prompts / images (the code the encode
nodes run), so the in-graph preview cannot drift from what is encoded. Token counts need a tokenizer:
only the tokenizer of a model the pack LISTS is loaded (never the VLM), picked by its widget value; the
request never names a path. Inputs are checked strictly and answered with 400 {"error": ...}.
GET /deepgen/size_presets lists output sizes that follow the model's rules.
GET /workflow_templates (ComfyUI's own route) gets our examples in their numbered order (template_order).

Registered only when a real PromptServer exists (in-process tests run a stub server without routes).
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import re
from pathlib import Path

from ..deepgen_model.conditioning import TRAINED_PROMPT_TOKENS, empty_prompt_warning, long_prompt_warning
from ..deepgen_model.constants import (DEFAULT_SIZE, IMAGE_PAD_TOKEN, MAX_REFERENCES, MAX_SIDE, NUM_THINK_TOKENS,
                                       REFERENCE_UNIT, SIZE_MULTIPLE)
from ..deepgen_model.errors import DeepGenInputError, DeepGenLoadError
from ..deepgen_model.images import image_token_count, output_size, reference_size
from ..deepgen_model.prompts import edit_prompt, t2i_prompt, tokenize_pair
from ..deepgen_model.release import NATIVE, QWEN, SOURCES, Release
from ..deepgen_model.inputs import check_prompt
from . import paths

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024  # bytes of JSON: also bounds every prompt (long ones are previewed with a warning)
BODY_SECONDS = 10  # to receive (and decode) a body of at most MAX_BODY bytes
MAX_NESTING = 8  # the request schema nests 3 levels; deeper JSON is refused before it is parsed
CHARS_PER_TOKEN = 4  # rough, for a long-prompt warning before a tokenizer is connected
MAX_IMAGE_SIDE = 1 << 16
LOADERS = {"DeepGenVLMLoader": ("vlm_name", SOURCES["vlm"]), "DeepGenCheckpointLoader": ("ckpt_name", SOURCES["checkpoint"])}
# Output-size presets: the training "fix_pixels" rule (sqrt(w*h) = 512, sides rounded up to multiples of 32)
ASPECTS = (("1:1", 1, 1), ("4:3", 4, 3), ("3:4", 3, 4), ("3:2", 3, 2), ("2:3", 2, 3), ("16:9", 16, 9),
           ("9:16", 9, 16), ("21:9", 21, 9), ("9:21", 9, 21))


# The template browser's order of our example_workflows/: by the number in their names ("DeepGen 2 - Edit an
# image"; the file name is the card's title on every frontend). ComfyUI lists a pack's templates in directory
# order (an unsorted glob: a hash order on ext4) and the frontend keeps that order under its default sort, so
# without this the first card a newcomer sees may be the fifth lesson.
EXAMPLES = frozenset(p.stem for p in (Path(__file__).resolve().parents[1] / "example_workflows").glob("*.json"))
EXAMPLE_NUMBER = re.compile(r"DeepGen (\d+) - ")
TEMPLATE_ROUTES = ("/workflow_templates", "/api/workflow_templates")


def example_rank(name: str) -> tuple:
    """Sort key of a template name: its lesson number, then the name (unnumbered names last)."""
    number = EXAMPLE_NUMBER.match(str(name))
    return (int(number[1]) if number else math.inf, str(name))


def ordered_templates(listing: dict) -> dict:
    """ComfyUI's {pack folder: [workflow names]} with our list (the one holding every example of ours,
    whatever the pack's folder is called) sorted by example_rank."""
    for folder, names in listing.items():
        if isinstance(names, list) and EXAMPLES and EXAMPLES <= set(names):
            listing[folder] = sorted(names, key=example_rank)
    return listing


class BadRequest(ValueError):
    pass


class BodyTooLarge(BadRequest):
    pass


def parse_body(raw: bytes):
    """Request bytes -> JSON value; BadRequest for invalid JSON or nesting deeper than MAX_NESTING (Python's
    parser stops by itself at its recursion limit, a RecursionError)."""
    try:
        body = json.loads(raw)
    except RecursionError as e:
        raise BadRequest(f"the request body nests deeper than {MAX_NESTING} levels") from e
    except ValueError as e:  # includes bytes that are not UTF-8
        raise BadRequest(f"the request body is not valid JSON ({str(e)[:120]})") from e
    level = [body]
    for _ in range(MAX_NESTING + 1):
        level = [v for x in level if isinstance(x, (dict, list)) for v in (x.values() if isinstance(x, dict) else x)]
        if not level:
            return body
    raise BadRequest(f"the request body nests deeper than {MAX_NESTING} levels")


class ModelNotListed(DeepGenLoadError):
    """The selected model is not (yet) in the model folders: the prompt preview still works, tokens wait."""


# ------------------------------------------------------------------ validation

def _int(body: dict, key: str, lo: int, hi: int, default: int | None = None, multiple: int = 1) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi or value % multiple:
        rule = f" and a multiple of {multiple}" if multiple > 1 else ""
        raise BadRequest(f"{key} must be an integer in {lo}..{hi}{rule}, got {value!r}")
    return value


def _text(body: dict, key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string, got {type(value).__name__}")
    check_prompt(value, key)
    return value  # any length (MAX_BODY bounds the request): a long prompt gets a warning, not a refusal


def _references(body: dict) -> list[tuple[int, int] | None]:
    refs = body.get("references")
    if not isinstance(refs, list) or not 1 <= len(refs) <= MAX_REFERENCES:
        raise BadRequest(f"references must be a list of 1..{MAX_REFERENCES} entries "
                         "({\"width\", \"height\"} or null when the size is unknown)")
    out = []
    for i, ref in enumerate(refs, 1):
        if ref is None:
            out.append(None)
            continue
        if not isinstance(ref, dict) or set(ref) - {"width", "height"}:
            raise BadRequest(f"references[{i - 1}] must be {{\"width\": int, \"height\": int}} or null")
        out.append((_int(ref, "width", 1, MAX_IMAGE_SIDE), _int(ref, "height", 1, MAX_IMAGE_SIDE)))
    return out


def _model(body: dict) -> dict | None:
    model = body.get("model")
    if model is None:
        return None
    if not isinstance(model, dict) or not isinstance(model.get("loader"), str) or model["loader"] not in LOADERS:
        raise BadRequest(f"model must be null or {{\"loader\": one of {sorted(LOADERS)}, \"name\": ..., "
                         "\"vlm_base\": ...}")
    for key in ("name", "vlm_base"):
        if not isinstance(model.get(key, ""), str) or len(model.get(key, "")) > 1024:
            raise BadRequest(f"model.{key} must be a string")
    return model


# ------------------------------------------------------------------ tokenizer of a listed model

def _listed(name: str, kinds, what: str) -> paths.Entry:
    """Only names the pack lists resolve: a path, "..", or an unlisted name is refused."""
    entry = paths.entries(*kinds).get(name)
    if entry is None:
        raise ModelNotListed(f"{what} {name!r} is not in the model folders (yet): token counts appear once its "
                             "weights are there")
    return entry


def _tokenizer_source(model: dict) -> tuple[str, ...]:
    """-> the folders that may hold the tokenizer, or the one converted VLM file that embeds it."""
    widget, kinds = LOADERS[model["loader"]]
    entry = _listed(model.get("name", ""), kinds, widget)
    if entry.kind == QWEN:
        return (entry.path,)
    base = model.get("vlm_base") or paths.NONE  # native model.pt: the tokenizer is the Qwen base folder's
    base = _listed(base, (QWEN,), "vlm_base").path if entry.kind == NATIVE and base != paths.NONE else None
    return tuple(map(str, Release.open(entry.path, vlm_base=base).require("tokenizer").tokenizer_sources()))


def _stamp(where: tuple[str, ...]) -> int:
    files = [f if f.endswith(".safetensors") else os.path.join(f, "tokenizer.json") for f in where]
    return max((os.stat(f).st_mtime_ns for f in files if os.path.exists(f)), default=0)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(where: tuple[str, ...], stamp: int):
    from ..deepgen_model import vlm_loading

    return vlm_loading.load_tokenizer(*where)


def _count_tokens(model: dict, positive: str, negative: str, placeholders: int) -> dict:
    where = _tokenizer_source(model)
    tokenizer = _load_tokenizer(where, _stamp(where))
    ids, mask = tokenize_pair(tokenizer, [positive], [negative])  # the encode's own tokenisation + padding
    pos, neg = (int(n) - placeholders for n in mask.sum(1).tolist())
    return {"positive": pos, "negative": neg, "padded": int(ids.shape[1]) - placeholders,
            "think": NUM_THINK_TOKENS, "tokenizer": model.get("name")}


# ------------------------------------------------------------------ the preview itself

def preview(body) -> dict:
    """Request body -> response (raises BadRequest for invalid input)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    mode = body.get("mode")
    if mode not in ("t2i", "edit"):
        raise BadRequest(f"mode must be \"t2i\" or \"edit\", got {mode!r}")
    prompt, negative = _text(body, "prompt"), _text(body, "negative_prompt")
    model = _model(body)
    out = {"mode": mode, "complete": True, "references": [], "output": None, "tokens": None, "tokens_note": None}
    placeholders = 0
    if mode == "t2i":
        out["positive"], out["negative"] = t2i_prompt(prompt), t2i_prompt(negative)
    else:
        refs = _references(body)
        max_side = _int(body, "max_side", REFERENCE_UNIT, MAX_SIDE, DEFAULT_SIZE, REFERENCE_UNIT)
        counts = []
        for ref in refs:
            if ref is None:  # unknown size: one pad stands in for the block's tokens (marked incomplete)
                out["references"].append(None)
                counts.append(1)
                continue
            w, h = reference_size(ref[0], ref[1], max_side)
            n = image_token_count(h, w)
            out["references"].append({"width": ref[0], "height": ref[1], "resized": [w, h], "tokens": n})
            counts.append(n)
        placeholders = refs.count(None)
        out["complete"] = not placeholders
        out["positive"], out["negative"] = edit_prompt(prompt, counts), edit_prompt(negative, counts)
        if len(refs) > 1 or refs[0] is not None:  # the engine's rule, as DeepGenEditEncode applies it
            width, height = (_int(body, k, SIZE_MULTIPLE, MAX_SIDE, DEFAULT_SIZE, SIZE_MULTIPLE) if len(refs) > 1
                             else None for k in ("width", "height"))  # one reference: its size, not the widgets
            w, h = output_size(width, height, [r and r["resized"] for r in out["references"]])
            out["output"] = {"width": w, "height": h, "from": "image1" if len(refs) == 1 else "widgets"}
    out["placeholder"] = IMAGE_PAD_TOKEN if placeholders else None
    out["retry"] = False  # true: ask again later (the model's files may appear)
    if model is None:
        out["tokens_note"] = "connect a DeepGen VLM or checkpoint loader to count tokens"
    else:
        try:
            out["tokens"] = _count_tokens(model, out["positive"], out["negative"], placeholders)
        except (DeepGenLoadError, DeepGenInputError, OSError, ValueError) as e:
            if isinstance(e, BadRequest):
                raise
            out["tokens_note"] = f"no token count: {e}"
            out["retry"] = isinstance(e, ModelNotListed)
    empty = empty_prompt_warning("prompt", prompt, mode == "edit")  # the encode node's own note, before a run
    out["warnings"] = ([empty] if empty else []) + _length_warnings(out, prompt, negative)
    return out


def _length_warnings(out: dict, prompt: str, negative: str) -> list[str]:
    """The engine's long-prompt note, from the token counts (text tokens: image tokens excluded), or
    estimated from the length while no tokenizer is connected."""
    if out["tokens"]:
        image = sum(r["tokens"] for r in out["references"] if r)
        counts = (("prompt", out["tokens"]["positive"] - image), ("negative_prompt", out["tokens"]["negative"] - image))
        return [w for w in (long_prompt_warning(what, n) for what, n in counts) if w]
    return [f"{what} is {len(text)} characters, probably more than the {TRAINED_PROMPT_TOKENS} tokens DeepGen was "
            "trained on (connect a loader for the exact count); it is encoded in full, but may be followed less "
            "closely and takes longer" for what, text in (("prompt", prompt), ("negative_prompt", negative))
            if len(text) > CHARS_PER_TOKEN * TRAINED_PROMPT_TOKENS]


def size_presets() -> list[dict]:
    """Output sizes near 512x512 in area for common aspect ratios: each side rounded up to a multiple of
    32 (training's fix_pixels rule; 32 is also a multiple of the required 16)."""
    out = []
    for name, a, b in ASPECTS:
        r = math.sqrt(a / b)
        w = math.ceil(DEFAULT_SIZE * r / REFERENCE_UNIT) * REFERENCE_UNIT
        h = math.ceil(DEFAULT_SIZE / r / REFERENCE_UNIT) * REFERENCE_UNIT
        out.append({"name": name, "width": w, "height": h})
    return out


# ------------------------------------------------------------------ aiohttp glue

def _register() -> None:
    try:
        from aiohttp import web
        from aiohttp.http_exceptions import HttpProcessingError
        from server import PromptServer
    except ImportError:
        return
    routes = getattr(getattr(PromptServer, "instance", None), "routes", None)
    if routes is None:  # no HTTP server (in-process execution): nothing to serve
        return

    def error(status: int, message: str):
        return web.json_response({"error": message}, status=status)

    async def read_body(request) -> bytes:
        """The body as sent and as decoded (aiohttp inflates a gzip/deflate Content-Encoding while it is read),
        each at most MAX_BODY bytes: reading stops there, so a small compressed body cannot become a huge one."""
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise BodyTooLarge(f"send a JSON body of at most {MAX_BODY} bytes")
        data = bytearray()
        try:
            while chunk := await request.content.read(MAX_BODY + 1 - len(data)):
                data += chunk
                if len(data) > MAX_BODY:
                    raise BodyTooLarge(f"the request body is over {MAX_BODY} bytes once decoded "
                                       f"(Content-Encoding {request.headers.get('Content-Encoding', 'none')}); "
                                       f"send a JSON body of at most {MAX_BODY} bytes")
        except (web.RequestPayloadError, HttpProcessingError) as e:
            raise BadRequest(f"the request body could not be read ({str(e).strip()[:160]})") from None
        return bytes(data)

    @routes.post("/deepgen/prompt_preview")
    async def prompt_preview(request):
        try:
            # bounded in time too: when aiohttp fails to decode a body that arrives after its headers, it answers
            # 400 itself but never ends the stream this handler reads (aiohttp 3.14)
            body = parse_body(await asyncio.wait_for(read_body(request), BODY_SECONDS))
            return web.json_response(await asyncio.to_thread(preview, body))
        except asyncio.TimeoutError:
            return error(408, f"the request body did not arrive (or could not be decoded) within {BODY_SECONDS} s")
        except BodyTooLarge as e:
            return error(413, str(e))
        except BadRequest as e:
            return error(400, str(e))
        except DeepGenInputError as e:  # e.g. a size the engine rejects, a prompt that is not valid text
            return error(400, str(e))

    @routes.get("/deepgen/size_presets")
    async def presets(request):
        return web.json_response({"presets": size_presets(), "multiple": SIZE_MULTIPLE,
                                  "reference_unit": REFERENCE_UNIT, "default": DEFAULT_SIZE})

    @web.middleware
    async def template_order(request, handler):
        """Reorders only GET /workflow_templates' JSON; any other request or response passes as it is."""
        response = await handler(request)
        if request.path not in TEMPLATE_ROUTES or request.method != "GET" or response.status != 200 \
                or getattr(response, "content_type", None) != "application/json":
            return response
        try:
            return web.json_response(ordered_templates(json.loads(response.text)))
        except (TypeError, ValueError, AttributeError) as e:  # an unexpected shape: ComfyUI's answer unchanged
            log.debug("DeepGen: template order not applied (%s)", e)
            return response

    try:  # custom nodes load before the server starts, while the app still takes middlewares
        PromptServer.instance.app.middlewares.append(template_order)
    except (AttributeError, RuntimeError) as e:
        log.warning("DeepGen: the example workflows keep ComfyUI's order in the template browser (%s)", e)


_register()
