"""deepgen_batch.ws (the stdlib websocket client) against a hand-written server socket."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from deepgen_batch.ws import BINARY, PONG, TEXT, WebSocket, WebSocketClosed, accept_key, encode_frame


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """Unmasked, as servers send them."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


def read_client_frame(conn) -> tuple[int, bytes]:
    head = conn.recv(2)
    assert head[1] & 0x80, "client frames must be masked"
    n = head[1] & 0x7F
    mask = conn.recv(4)
    data = b""
    while len(data) < n:
        data += conn.recv(n - len(data))
    return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class OneShotServer:
    def __init__(self, script, status="101 Switching Protocols"):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.script, self.status, self.received, self.request = script, status, [], b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            while b"\r\n\r\n" not in self.request:
                self.request += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in self.request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key"))
            conn.sendall(f"HTTP/1.1 {self.status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Accept: {accept_key(key.decode())}\r\n\r\n".encode())
            self.script(conn, self)


def test_messages_fragments_ping_and_close():
    big = bytes(range(256)) * 300  # 76800 bytes: 64-bit length
    mid = b"m" * 300               # 16-bit length

    def script(conn, srv):
        conn.sendall(server_frame(TEXT, b'{"type": "status"}') + server_frame(TEXT, b"he", fin=False))
        conn.sendall(server_frame(9, b"ping!"))                       # a ping between fragments
        conn.sendall(server_frame(0, b"llo") + server_frame(BINARY, big) + server_frame(BINARY, mid))
        srv.received.append(read_client_frame(conn))                  # the pong
        frame = server_frame(TEXT, b"split in two")
        conn.sendall(frame[:5])
        time.sleep(0.3)                                               # the client times out mid-frame
        conn.sendall(frame[5:] + server_frame(8, (1000).to_bytes(2, "big")))
        srv.received.append(read_client_frame(conn))                  # the close reply

    srv = OneShotServer(script)
    ws = WebSocket.connect(f"ws://127.0.0.1:{srv.port}/ws?clientId=abc", {"Authorization": "Bearer t"})
    assert b"GET /ws?clientId=abc HTTP/1.1" in srv.request and b"Authorization: Bearer t" in srv.request
    assert ws.recv(5) == (TEXT, b'{"type": "status"}')
    assert ws.recv(5) == (TEXT, b"hello")
    assert ws.recv(5) == (BINARY, big)
    assert ws.recv(5) == (BINARY, mid)
    with pytest.raises(socket.timeout):
        ws.recv(0.1)
    assert ws.recv(5) == (TEXT, b"split in two")  # nothing lost to the timeout
    with pytest.raises(WebSocketClosed):
        ws.recv(5)
    srv.thread.join(5)
    assert srv.received[0] == (PONG, b"ping!") and srv.received[1][0] == 8


def test_handshake_refused():
    srv = OneShotServer(lambda conn, srv: None, status="403 Forbidden")
    with pytest.raises(WebSocketClosed, match="HTTP 403"):
        WebSocket.connect(f"ws://127.0.0.1:{srv.port}/ws")


def test_encode_frame_masks_and_sizes():
    f = encode_frame(TEXT, b"abc", mask=b"\x01\x02\x03\x04")
    assert f == bytes([0x81, 0x83, 1, 2, 3, 4, ord("a") ^ 1, ord("b") ^ 2, ord("c") ^ 3])
    assert encode_frame(BINARY, b"x" * 300, b"\0" * 4)[1:4] == bytes([0xFE, 1, 44])
