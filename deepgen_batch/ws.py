"""A minimal RFC 6455 websocket client (stdlib only) for ComfyUI's /ws event stream.

Only what a listener needs: the handshake, reading text/binary messages (fragmented or not),
answering pings, closing. Frames are parsed only once fully buffered, so a read timeout never loses
data: the caller may simply call recv() again.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 1, 2, 8, 9, 10, 0
_MAX_HEAD = 65536


class WebSocketClosed(ConnectionError):
    pass


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame; clients must mask (mask=None draws a random key)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class WebSocket:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buf = bytearray()
        self._parts: list[bytes] = []  # fragments of a message still being received
        self._kind = None

    @classmethod
    def connect(cls, url: str, headers: dict | None = None, timeout: float = 10.0) -> "WebSocket":
        u = urlsplit(url)
        secure = u.scheme == "wss"
        sock = socket.create_connection((u.hostname, u.port or (443 if secure else 80)), timeout)
        try:
            if secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
            key = base64.b64encode(os.urandom(16)).decode()
            lines = [f"GET {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1", f"Host: {u.netloc}",
                     "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                     "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in (headers or {}).items())]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            ws = cls(sock)
            status, fields = ws._read_head()
            if status != 101:
                raise WebSocketClosed(f"websocket handshake to {url} answered HTTP {status}")
            if fields.get("sec-websocket-accept") != accept_key(key):
                raise WebSocketClosed(f"websocket handshake to {url}: bad Sec-WebSocket-Accept")
            return ws
        except BaseException:
            sock.close()
            raise

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise WebSocketClosed("connection closed by the server")
        self._buf += chunk

    def _read_head(self) -> tuple[int, dict]:
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > _MAX_HEAD:
                raise WebSocketClosed("oversized handshake response")
            self._fill()
        end = self._buf.index(b"\r\n\r\n")
        head, self._buf = bytes(self._buf[:end]).decode("latin-1"), self._buf[end + 4:]
        status_line, *rest = head.split("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        fields = {}
        for line in rest:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        return status, fields

    def _frame(self) -> tuple[bool, int, bytes]:
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            self._fill()

    def _parse(self) -> tuple[bool, int, bytes] | None:
        """The first frame if it is fully buffered (then consumed), else None (buffer untouched)."""
        buf = self._buf
        if len(buf) < 2:
            return None
        off = {126: 4, 127: 10}.get(buf[1] & 0x7F, 2)
        masked = bool(buf[1] & 0x80)
        start = off + (4 if masked else 0)
        if len(buf) < start:
            return None
        n = int.from_bytes(buf[2:off], "big") if off > 2 else buf[1] & 0x7F
        if len(buf) < start + n:
            return None
        payload = bytes(buf[start:start + n])
        if masked:
            mask = bytes(buf[off:start])
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        del buf[:start + n]
        return fin, opcode, payload

    def recv(self, timeout: float | None = None) -> tuple[int, bytes]:
        """-> (TEXT | BINARY, payload). Raises socket.timeout (state kept) or WebSocketClosed."""
        self.sock.settimeout(timeout)
        while True:
            fin, opcode, payload = self._frame()
            if opcode == PING:
                self.send(PONG, payload)
            elif opcode == PONG:
                continue
            elif opcode == CLOSE:
                self.close()
                raise WebSocketClosed("websocket closed by the server")
            else:
                if opcode != CONTINUATION:
                    self._kind, self._parts = opcode, []
                self._parts.append(payload)
                if fin:
                    data, self._parts = b"".join(self._parts), []
                    return self._kind, data

    def send(self, opcode: int, payload: bytes = b""):
        self.sock.sendall(encode_frame(opcode, payload))

    def close(self):
        try:
            self.sock.settimeout(1.0)
            self.send(CLOSE, (1000).to_bytes(2, "big"))
        except OSError:
            pass
        finally:
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
