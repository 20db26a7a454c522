"""Properties of gptbatch.inputs.render: deterministic, and blind to a template's layout."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptbatch.inputs.render import Target, render
from gptbatch.inputs.requests import read_requests

TEMPLATE: dict[str, Any] = {
    "url": "/v1/chat/completions",
    "body": {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "Label {{ kind }} texts."},
            {"role": "user", "content": "{{ text }} ({{ id }})"},
        ],
    },
}

cells = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
rows = st.lists(st.tuples(cells, cells), min_size=1, max_size=15)


def target(tmp: Path, table: list[tuple[str, str]], template_yaml: str) -> Target:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)  # a bare \r is quoted only so
    writer.writerow(["id", "text", "kind"])
    for i, (text, kind) in enumerate(table):
        writer.writerow([f"row{i}", text, kind])
    data = tmp / "data.csv"
    data.write_bytes(out.getvalue().encode())
    node = yaml.compose(template_yaml)
    return Target(
        name="t",
        data=data,
        data_display="data.csv",
        id="id",
        request=yaml.safe_load(template_yaml),
        template_display="t.yaml",
        template_node=node,
        template_path=(),
        template_text=template_yaml,
    )


def reorder(value: Any) -> Any:
    """The same value with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(v) for v in value]
    return value


def rendered_bytes(t: Target) -> bytes:
    """What render streams for a target, as bytes."""
    out = io.BytesIO()
    render(t, out)
    return out.getvalue()


def keys(tmp: Path, rendered: bytes) -> list[str]:
    path = tmp / "rendered.jsonl"
    path.write_bytes(rendered)
    return [r.key for r in read_requests([path])]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=rows)
def test_rendering_is_deterministic_and_layout_blind(
    tmp_path: Path, table: list[tuple[str, str]]
) -> None:
    compact = yaml.safe_dump(TEMPLATE, sort_keys=False, default_flow_style=True, width=1000)
    spread = "# the same template, laid out otherwise\n\n" + yaml.safe_dump(
        reorder(TEMPLATE), sort_keys=False, indent=4
    )
    first = rendered_bytes(target(tmp_path, table, compact))
    assert rendered_bytes(target(tmp_path, table, compact)) == first
    assert rendered_bytes(target(tmp_path, table, spread)) == first
    found = keys(tmp_path, first)
    assert len(found) == len(table) == len(set(found))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=rows, row=st.integers(min_value=0, max_value=14), new=cells)
def test_editing_one_row_changes_exactly_its_key(
    tmp_path: Path, table: list[tuple[str, str]], row: int, new: str
) -> None:
    row %= len(table)
    template = yaml.safe_dump(TEMPLATE)
    before = keys(tmp_path, rendered_bytes(target(tmp_path, table, template)))
    edited = list(table)
    edited[row] = (new, table[row][1])
    after = keys(tmp_path, rendered_bytes(target(tmp_path, edited, template)))
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert changed == ([] if new == table[row][0] else [row])
