"""One ComfyUI server over HTTP (stdlib urllib): upload, queue, history, view, queue load, cancel.

Errors are sorted into two kinds the runner acts on: TransientError (connection refused/reset,
timeouts, HTTP 5xx/408/429: worth retrying, maybe on another server) and ItemError (the server
answered, and the answer is final for this item: validation error, failed node, missing output).
"""
from __future__ import annotations

import http.client
import json
import mimetypes
import uuid
import urllib.error
import urllib.parse
import urllib.request

from .ws import WebSocket

_RETRY_STATUS = (408, 429)


class TransientError(Exception):
    """Worth retrying: the server could not be reached or had a temporary problem."""


class ItemError(Exception):
    """Final for this item: report it in the manifest and go on with the batch."""


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"server URL {url!r}: use http://HOST:PORT or https://HOST[:PORT][/PATH]")
    return url


def _snippet(data: bytes, n: int = 300) -> str:
    return data[:n].decode("utf-8", "replace").strip()


def describe_rejection(status: int, body: bytes) -> str:
    """POST /prompt's HTTP 400 (validation) -> one readable line naming the nodes and inputs."""
    try:
        info = json.loads(body)
    except ValueError:
        return f"prompt rejected (HTTP {status}): {_snippet(body)}"
    err = info.get("error") or {}
    parts = [err.get("message", "") if isinstance(err, dict) else str(err)]
    for node_id, node in (info.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            detail = f" ({e['details']})" if e.get("details") else ""
            parts.append(f"node {node_id} {node.get('class_type', '')}: {e.get('message', '')}{detail}")
    return f"prompt rejected (HTTP {status}): " + "; ".join(p for p in parts if p)


def execution_error(entry: dict) -> dict | None:
    """The execution_error message of a /history entry (node_id, node_type, exception_type, exception_message)."""
    for message in (entry.get("status") or {}).get("messages") or []:
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_error":
            return message[1] if isinstance(message[1], dict) else {}
    return None


def describe_failure(entry: dict) -> str:
    """A /history entry (or execution_error event) that did not succeed -> its error in one line."""
    data = execution_error(entry)
    if data is not None:
        return (f"{data.get('node_type', '?')} (node {data.get('node_id', '?')}) failed: "
                f"{data.get('exception_type', '')}: {str(data.get('exception_message', '')).strip()}")
    if any(m[0] == "execution_interrupted" for m in (entry.get("status") or {}).get("messages") or []
           if isinstance(m, list) and m):
        return "interrupted on the server (someone cancelled the prompt)"
    return f"prompt ended with status {(entry.get('status') or {}).get('status_str', 'unknown')!r}"


def output_images(entry: dict) -> list[dict]:
    """Saved images of a finished prompt (type "output", what SaveImage writes), in node order."""
    found = []
    for _node, out in sorted((entry.get("outputs") or {}).items(), key=lambda kv: str(kv[0])):
        found += [im for im in out.get("images") or [] if im.get("type", "output") == "output"]
    return found


def new_prompt_id() -> str:
    """A canonical hyphenated UUID: current ComfyUI (>= 0.2x) refuses any other prompt_id (HTTP 400)."""
    return str(uuid.uuid4())


class ComfyClient:
    def __init__(self, url: str, headers: dict | None = None, timeout: float = 60.0):
        self.url = normalise_url(url)
        self.headers = dict(headers or {})
        self.timeout = timeout

    def __repr__(self):
        return f"ComfyClient({self.url})"

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                timeout: float | None = None) -> tuple[int, bytes]:
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            data = e.read()
            if e.code >= 500 or e.code in _RETRY_STATUS:
                raise TransientError(f"{method} {self.url}{path}: HTTP {e.code} {_snippet(data)}") from None
            return e.code, data
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise TransientError(f"{method} {self.url}{path}: {reason}") from None

    def get_json(self, path: str, timeout: float | None = None):
        status, data = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ItemError(f"GET {self.url}{path}: HTTP {status} {_snippet(data)}")
        try:
            return json.loads(data)
        except ValueError:
            raise TransientError(f"GET {self.url}{path}: not JSON: {_snippet(data)}") from None

    def post_json(self, path: str, payload) -> tuple[int, bytes]:
        return self.request("POST", path, json.dumps(payload).encode(), "application/json")

    # -- the batch steps
    def queue_load(self, ours: set = frozenset(), timeout: float = 10.0) -> int:
        """Prompts running + pending on the server that are not ours (GET /queue)."""
        q = self.get_json("/queue", timeout=timeout)
        entries = list(q.get("queue_running") or []) + list(q.get("queue_pending") or [])
        return sum(1 for e in entries if not (len(e) > 1 and e[1] in ours))

    def queue_ids(self, timeout: float = 10.0) -> set[str]:
        """Ids of the prompts running or waiting on the server (GET /queue)."""
        q = self.get_json("/queue", timeout=timeout)
        entries = list(q.get("queue_running") or []) + list(q.get("queue_pending") or [])
        return {e[1] for e in entries if isinstance(e, list) and len(e) > 1}

    def upload(self, data: bytes, name: str, subfolder: str) -> str:
        """POST /upload/image (overwrite: names are content hashes) -> the LoadImage value."""
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        fields = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in (("type", "input"), ("subfolder", subfolder), ("overwrite", "true")))
        body = (fields + f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode())
        status, resp = self.request("POST", "/upload/image", body, f"multipart/form-data; boundary={boundary}")
        if status != 200:
            raise ItemError(f"upload refused by {self.url}: HTTP {status} {_snippet(resp)}")
        info = json.loads(resp)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue_prompt(self, prompt: dict, prompt_id: str, client_id: str):
        status, resp = self.post_json("/prompt", {"prompt": prompt, "prompt_id": prompt_id, "client_id": client_id})
        if status != 200:
            raise ItemError(describe_rejection(status, resp))

    def history(self, prompt_id: str, timeout: float | None = None) -> dict | None:
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}", timeout=timeout).get(prompt_id)

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                        "type": image.get("type", "output")})
        status, data = self.request("GET", "/view?" + query)
        if status != 200:
            raise ItemError(f"download of {image['filename']} from {self.url} failed: HTTP {status}")
        return data

    def cancel(self, prompt_id: str):
        """Best effort: drop it from the queue, or interrupt it if it is the one running."""
        for path, payload in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                self.post_json(path, payload)
            except TransientError:
                pass

    def object_info(self, class_type: str) -> dict | None:
        info = self.get_json(f"/object_info/{urllib.parse.quote(class_type)}", timeout=30)
        return info.get(class_type)

    def open_ws(self, client_id: str, timeout: float = 10.0) -> WebSocket:
        url = self.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
        try:
            return WebSocket.connect(url, self.headers, timeout)
        except OSError as e:
            raise TransientError(f"websocket {url}: {e}") from None
