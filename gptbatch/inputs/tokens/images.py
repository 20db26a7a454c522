"""Image token counts (OpenAI vision guide, "Calculating costs") and image sizes from headers."""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class TileRule:
    """Fit in 2048x2048, shortest side to 768, then base + tile tokens per 512px square."""

    base: int
    tile: int


@dataclass(frozen=True)
class PatchRule:
    """32px patches (at most 1536) times a multiplier, kept in hundredths to stay exact."""

    multiplier_pct: int


GPT4O_TILES = TileRule(85, 170)
# Checked in order, first prefix wins: the more specific names come first.
_IMAGE_RULES: tuple[tuple[str, TileRule | PatchRule], ...] = (
    ("gpt-5-mini", PatchRule(162)),
    ("gpt-5-nano", PatchRule(246)),
    ("gpt-4.1-mini", PatchRule(162)),
    ("gpt-4.1-nano", PatchRule(246)),
    ("o4-mini", PatchRule(172)),
    ("gpt-4o-mini", TileRule(2833, 5667)),
    ("gpt-5", TileRule(70, 140)),  # gpt-5, gpt-5-chat-latest
    ("gpt-4o", GPT4O_TILES),
    ("chatgpt-4o", GPT4O_TILES),
    ("gpt-4.1", GPT4O_TILES),
    ("gpt-4.5", GPT4O_TILES),
    ("gpt-4-turbo", GPT4O_TILES),  # the guide's original rule, before per-model tables
    ("o1", TileRule(75, 150)),  # o1, o1-pro
    ("o3", TileRule(75, 150)),
    ("computer-use-preview", TileRule(65, 129)),
)
_MAX_PATCHES = 1536
_PATCH = 32
# With the long side at most 2048 and the short side at most 768, a high-detail image never
# needs more than 4 x 2 tiles of 512px.
_MAX_TILES = 8


def _base_model(model: str) -> str:
    """'ft:gpt-4o-mini-2024-07-18:org::id' -> 'gpt-4o-mini-2024-07-18'."""
    if model.startswith("ft:"):
        return model.split(":")[1]
    return model


def image_rule(model: str | None) -> TileRule | PatchRule | None:
    if isinstance(model, str):
        base = _base_model(model)
        for prefix, rule in _IMAGE_RULES:
            if base.startswith(prefix):
                return rule
    return None


def _tile_tokens(width: int, height: int, rule: TileRule) -> int:
    w, h = Fraction(width), Fraction(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:  # only ever scaled down
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return rule.base + rule.tile * math.ceil(w / 512) * math.ceil(h / 512)


def _patch_tokens(width: int, height: int, rule: PatchRule) -> int:
    patches = math.ceil(width / _PATCH) * math.ceil(height / _PATCH)
    if patches > _MAX_PATCHES:
        r = math.sqrt(_PATCH * _PATCH * _MAX_PATCHES / (width * height))
        pw, ph = width * r / _PATCH, height * r / _PATCH
        r *= min(max(1, math.floor(pw)) / pw, max(1, math.floor(ph)) / ph)
        # the guide's arithmetic is exact; step back from float noise above whole patches
        pw, ph = width * r / _PATCH, height * r / _PATCH
        patches = min(_MAX_PATCHES, math.ceil(pw - 1e-9) * math.ceil(ph - 1e-9))
    return -(-patches * rule.multiplier_pct // 100)


def image_tokens(width: int, height: int, detail: str, model: str) -> int:
    """Tokens for an image of known size; unknown models get gpt-4o's rule."""
    rule = image_rule(model) or GPT4O_TILES
    width, height = max(1, int(width)), max(1, int(height))
    if isinstance(rule, PatchRule):  # the guide gives these models no detail levels
        return _patch_tokens(width, height, rule)
    if detail == "low":
        return rule.base
    return _tile_tokens(width, height, rule)


def max_image_tokens(detail: str, model: str) -> int:
    """The most an image of any size can cost at this detail level for this model."""
    rule = image_rule(model) or GPT4O_TILES
    if isinstance(rule, PatchRule):
        return -(-_MAX_PATCHES * rule.multiplier_pct // 100)
    if detail == "low":
        return rule.base
    return rule.base + _MAX_TILES * rule.tile


_TRUNCATED = "truncated"

_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


def _jpeg_size(data: bytes) -> tuple[int, int] | str | None:
    i, n = 2, len(data)
    while True:
        while i < n and data[i] != 0xFF:  # tolerate garbage between segments
            i += 1
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return _TRUNCATED
        marker = data[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if i + 2 > n:
            return _TRUNCATED
        if marker in _JPEG_SOF:
            if i + 7 > n:
                return _TRUNCATED
            height = int.from_bytes(data[i + 3 : i + 5], "big")
            width = int.from_bytes(data[i + 5 : i + 7], "big")
            return width, height
        i += int.from_bytes(data[i : i + 2], "big")


def _webp_size(data: bytes) -> tuple[int, int] | str | None:
    if len(data) < 30:
        return _TRUNCATED
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return width, height
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width-1, height-1
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1, height-1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _header_size(data: bytes) -> tuple[int, int] | str | None:
    """(width, height) from a PNG/JPEG/GIF/WebP header; _TRUNCATED if more bytes are needed."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24:
            return _TRUNCATED
        if data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            return _TRUNCATED
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if len(data) < 12 and any(
        sig.startswith(data) for sig in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"GIF8", b"RIFF")
    ):
        return _TRUNCATED
    return None


def _data_url_size(url: str) -> tuple[int, int] | None:
    """Decode only as much of a base64 data URL as the header needs (JPEG EXIF may need more)."""
    comma = url.find(",")
    if comma < 0 or not url[:comma].lower().endswith(";base64"):
        return None
    payload_start, chars = comma + 1, 4096
    while True:
        chunk = "".join(url[payload_start : payload_start + chars].split())  # MIME line breaks
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        try:
            data = base64.b64decode(chunk)
        except (binascii.Error, ValueError):
            return None
        found = _header_size(data)
        if found != _TRUNCATED:
            return found if isinstance(found, tuple) else None
        if payload_start + chars >= len(url):
            return None
        chars *= 8


def image_size(data_url_or_bytes: str | bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, JPEG, GIF or WebP image given as bytes or a base64 data URL."""
    if isinstance(data_url_or_bytes, str):
        if not data_url_or_bytes.startswith("data:"):
            return None
        return _data_url_size(data_url_or_bytes)
    found = _header_size(bytes(data_url_or_bytes[:65536]))
    if found == _TRUNCATED and len(data_url_or_bytes) > 65536:
        found = _header_size(bytes(data_url_or_bytes))
    return found if isinstance(found, tuple) else None
