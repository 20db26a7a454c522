"""Why a target's request changed when its row did not: nested values (objects and lists:
a JSONL record's, or made by a template expression) placed in a template were written as
Python's repr before RENDER_FORMAT 3, and are canonical JSON since, which changes those
requests' keys (and only theirs)."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from pathlib import Path

from gptbatch.errors import InputError
from gptbatch.inputs.render import Target, as_rendered, render
from gptbatch.inputs.requests import read_requests


def legacy_keys(
    target: Target, rendered: Path, model: str | None, endpoint: str | None
) -> dict[str, str]:
    """custom_id -> the key its request had when nested values rendered as repr, for each
    request of the rendered file whose line that changes (a JSONL row's object or list, or
    one a template expression makes, e.g. {{ text.split() }}). Streams through temp files;
    reads, never writes, the state."""
    source = as_rendered(target, rendered.parent.parent)
    if not source.data.exists():
        return {}
    with tempfile.TemporaryDirectory(prefix="gptbatch-legacy-") as tmp:
        legacy, changed = Path(tmp) / "legacy.jsonl", Path(tmp) / "changed.jsonl"
        try:
            with open(legacy, "wb") as out:
                render(source, out, legacy=True)
        except InputError:
            return {}
        found = 0
        with open(legacy, "rb") as old, open(rendered, "rb") as new, open(changed, "wb") as out:
            for before, now in itertools.zip_longest(old, new):
                if before is None or now is None:
                    return {}  # not the same rows (a --sample render): no line-by-line answer
                if before != now:
                    out.write(before)
                    found += 1
        keys: dict[str, str] = {}
        if found:
            with contextlib.suppress(InputError):
                for request in read_requests([changed], model=model, endpoint=endpoint):
                    keys[request.custom_id] = request.key
        return keys
