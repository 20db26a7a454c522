"""The models the simulated Batch API serves: its own catalogue, read from the packaged data.

The simulator checks the client, so it shares no client logic: it reads the same data file
the price table comes from (the models the real API serves at the table's date) and matches
names its own way, as the API does: an exact name, a dated snapshot of one, or a fine-tune
of one.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources

_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4})")  # -2024-07-18, -20250929, -0613


@functools.cache
def catalogue() -> frozenset[str]:
    """Every model name in the packaged data, priced or not."""
    raw = json.loads(
        resources.files("gptbatch").joinpath("data/prices.json").read_text(encoding="utf-8")
    )
    return frozenset(raw["models"]) | frozenset(raw.get("known_without_price", ()))


def served(model: str) -> bool:
    """Whether the API serves this model: a catalogue name, its dated snapshot, a fine-tune."""
    if model.startswith("ft:") and model.count(":") >= 2:
        model = model.split(":")[1]
    names = catalogue()
    if model in names:
        return True
    return any(model.startswith(name) and _SNAPSHOT.fullmatch(model[len(name) :]) for name in names)
