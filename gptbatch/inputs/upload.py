"""The exact line a build uploads for an input line: its sha256 is the request's content key."""

from __future__ import annotations

import json

from gptbatch.canonical import canonical_json
from gptbatch.fastjson import fast_decoder
from gptbatch.inputs import gemini_lines, messages_lines

# orjson where it gives json's value (a million upload lines parse in a third of the time);
# the line's sha256 is checked against its key by the caller in any case.
_DECODE = fast_decoder(json.JSONDecoder().decode)


def upload_line(raw: bytes, model: str | None, endpoint: str | None) -> bytes:
    """The canonical line to upload for a raw input line, with the config's defaults applied
    (model and endpoint, as the validator applies them when it keys the request)."""
    if endpoint == gemini_lines.GENERATE_URL:
        return gemini_lines.upload_line(raw, model)
    if endpoint == messages_lines.MESSAGES_URL:
        return messages_lines.upload_line(raw, model)
    obj = _DECODE(raw.lstrip(b"\xef\xbb\xbf").decode("utf-8"))
    if endpoint is not None and "url" not in obj:
        obj["url"] = endpoint
    body = obj.get("body")
    if model is not None and isinstance(body, dict) and "model" not in body:
        body["model"] = model
    return canonical_json({k: obj[k] for k in ("custom_id", "method", "url", "body")})
