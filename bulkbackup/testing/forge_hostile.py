"""The stand-in's hostile REST answers (ForgeState's `api_drip_*`, `api_pad_*` switches),
written on the handler's socket by hand: a 200 whose body is dripped, or padded."""

from __future__ import annotations

import io

from bulkbackup.testing.forge_state import ForgeState


def send(f: ForgeState, wfile: io.BufferedIOBase, body: bytes, headers: dict[str, str]) -> None:
    """A 200 whose body is dripped (api_drip_s; with api_drip_head the status line and
    headers too) or padded (api_pad_mb of spaces inside the array, streamed). The caller
    closes the connection after it when dripped, or padded without a size."""
    pad = 0 if f.api_drip_s > 0 else f.api_pad_mb << 20
    size = (["Connection: close"] if f.api_pad_unsized
            else [f"Content-Length: {len(body) + pad}"])  # unsized: the body ends at EOF
    lines = ["HTTP/1.1 200 OK", *(f"{k}: {v}" for k, v in headers.items()), *size]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if f.api_drip_s > 0:
        slow = head + body if f.api_drip_head else body
        wfile.write(b"" if f.api_drip_head else head)
        for i in range(len(slow)):
            if f._stopping.wait(f.api_drip_s):
                break
            wfile.write(slow[i : i + 1])
        return
    wfile.write(head + body[:1])  # "[": the padding is whitespace inside the array
    spaces = b" " * (1 << 16)
    while pad > 0:
        wfile.write(spaces[:pad])
        pad -= len(spaces)
    wfile.write(body[1:])
