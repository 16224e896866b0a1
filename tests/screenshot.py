"""docs/status-page.png carries the digest of the page's files it shows (a PNG text chunk):
the browser test writes its screenshot to build/test-artifacts/ and, only with
AIOLLMUX_UPDATE_SCREENSHOT=1, to docs/; the docs test fails if the docs' copy is stale."""

from __future__ import annotations

import hashlib
import struct
import zlib
from importlib import resources
from pathlib import Path

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "status-page.png"
UPDATE_SCREENSHOT = "AIOLLMUX_UPDATE_SCREENSHOT"  # =1: the browser test refreshes docs/
_KEY = b"aiollmux-ui-sha256"
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ui_digest() -> str:
    digest = hashlib.sha256()
    for name in ("index.html", "status.css", "status.js"):
        digest.update(resources.files("aiollmux.ui").joinpath(name).read_bytes())
    return digest.hexdigest()


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png.startswith(_SIGNATURE), "not a PNG"
    chunks, at = [], len(_SIGNATURE)
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind = png[at + 4 : at + 8]
        chunks.append((kind, png[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def stamped(png: bytes, digest: str) -> bytes:
    """`png` with a tEXt chunk naming `digest`, right after its header chunk."""
    data = _KEY + b"\0" + digest.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + data))
    header_end = len(_SIGNATURE) + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:header_end] + chunk + png[header_end:]


def stamp_of(png: bytes) -> str | None:
    for kind, data in _chunks(png):
        key, _, value = data.partition(b"\0")
        if kind == b"tEXt" and key == _KEY:
            return value.decode()
    return None
