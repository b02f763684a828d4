"""HTTP requests written by hand on a real socket, for what a client library would not send
(curl's bodiless POST, ...)."""

from __future__ import annotations

import socket

Answer = tuple[int, dict[str, str], bytes]


def curl_post(host: str, port: int, path: str) -> Answer:
    """What `curl -X POST http://host/path` sends: no body, no Content-Length.
    Returns (status, headers with lower-case names, body)."""
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: curl/8.5.0"
                  "\r\nAccept: */*\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
        while len(body) < int(headers["content-length"]):
            body += s.recv(65536)
    return int(status_line.split(" ")[1]), headers, body
