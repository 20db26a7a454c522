"""Reading back a request line the scanner saw before (gptbatch.inputs.scan): its custom_id,
and its line number, to confirm a sighting found in the compact index (inputs.seen_ids)."""

from __future__ import annotations

import json


def custom_id_of(content: bytes | None) -> str | None:
    """The custom_id of a raw line, if it is a JSON object with a string custom_id (or,
    without one, a string key: Gemini's lines name their request so, gemini_lines)."""
    if content is None:
        return None
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    custom_id = value["custom_id"] if "custom_id" in value else value.get("key")
    return custom_id if isinstance(custom_id, str) else None


def line_at(path: str, offset: int, custom_id: str) -> int | None:
    """The number of the line starting at offset, if its custom_id is custom_id (else None).

    Only a duplicate (an error) gets here, so counting newlines from the start is fine.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            if custom_id_of(f.readline().rstrip(b"\n").rstrip(b"\r")) != custom_id:
                return None
            f.seek(0)
            line, remaining = 1, offset
            while remaining > 0 and (block := f.read(min(remaining, 1 << 20))):
                line += block.count(b"\n")
                remaining -= len(block)
            return line
    except OSError:
        return None
