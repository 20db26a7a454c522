"""Export: one flat row per request (input order) joining its line, result, usage and cost."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gptbatch.config.spec import Spec
from gptbatch.engine.outputs import output_paths
from gptbatch.engine.usage import anthropic_usage, gemini_usage, usage_cost
from gptbatch.errors import UsageError
from gptbatch.inputs.gemini_lines import GENERATE_URL
from gptbatch.inputs.located import RowLines
from gptbatch.inputs.render import Target
from gptbatch.pricing import price_for
from gptbatch.state.rows import RequestRow, ResultRow
from gptbatch.state.store import Store, state_dir

FORMATS = ("jsonl", "csv")


@dataclass(frozen=True)
class ExportRow:
    """One request and what became of it; None where there is nothing (yet) to say."""

    custom_id: str
    input: str
    line: int
    model: str | None
    endpoint: str
    reply: Any  # text; an embedding (list); moderation {"flagged", "categories"}
    finish_reason: str | None
    input_tokens: int | None
    cached_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    cost: float | None  # US dollars at Batch API prices; None when the price is unknown
    status: str  # ok | failed | pending
    error: str | None


COLUMNS = tuple(f.name for f in dataclasses.fields(ExportRow))


def check_export_target(target: str | os.PathLike[str], specs: Iterable[Spec]) -> None:
    """UsageError if writing the export to target would destroy a file gptbatch needs.

    The same rule as outputs (outputs.check_targets): never an input; and never the
    config, an output or errors file, or anything in a build state directory, of the
    project or its rehearsal (overwriting state.db would make every command say "damaged").
    """
    where = Path(os.path.realpath(target))
    for spec in specs:
        names = {Path(os.path.realpath(p)): "an input" for p in spec.inputs}
        names[Path(os.path.realpath(spec.path))] = "the config"
        for output, errors in output_paths(spec.inputs, spec.output_dir).values():
            names.setdefault(Path(os.path.realpath(output)), "an output")
            names.setdefault(Path(os.path.realpath(errors)), "an errors file")
        what = names.get(where) or _stale_output(where, Path(os.path.realpath(spec.output_dir)))
        state = Path(os.path.realpath(state_dir(spec.output_dir)))
        if what is None and (where == state or where.is_relative_to(state)):
            what = "in the build state directory"
        if what is not None:
            raise UsageError(
                f"-o {target}: {what} of {spec.path.name} ({where}); writing the export there "
                "would destroy it. Nothing was written: pass another file, e.g. -o export."
                + ("csv" if str(target).endswith(".csv") else "jsonl")
            )


def _stale_output(where: Path, output_dir: Path) -> str | None:
    """Is where an output pair of an input since dropped (as clean recognises them)?"""
    if where.parent != output_dir or not where.exists():
        return None
    if where.name.endswith(".errors.jsonl"):
        return "an errors file"
    if (
        where.name.endswith(".jsonl")
        and where.with_name(where.name[:-6] + ".errors.jsonl").exists()
    ):
        return "an output"
    return None


def export_rows(spec: Spec, store: Store) -> Iterator[ExportRow]:
    """Every current request of every input, in config then input order, from one snapshot."""
    targets = {spec.targets[t.name]: t for t in spec.data_targets if t.name in spec.targets}
    with store.reading():
        for path in spec.inputs:
            shown = _shown(str(path), str(spec.root))
            lines = _data_lines(store, path, targets.get(path))
            for request, result in store.request_results(str(path)):
                row = export_row(request, result, shown, spec.prices)
                line = lines(request.custom_id) if lines is not None else None
                if line is not None and lines is not None:  # a data target's row: its data
                    row = dataclasses.replace(row, input=lines.target.data_display, line=line)
                yield row


def _data_lines(store: Store, path: Path, target: Target | None) -> RowLines | None:
    """For a data target's rendered file that is the one the state's requests were read
    from: where each request's row is in the data. None otherwise (they keep the rendered
    file's lines: after an edit, until the next build, the data no longer says)."""
    if target is None:
        return None
    record = store.input_record(str(path))
    try:
        st = path.stat()
    except OSError:
        return None
    if record is None or (record[0], record[1]) != (st.st_size, st.st_mtime_ns):
        return None
    return RowLines(target, path)


def export_row(
    request: RequestRow,
    result: ResultRow | None,
    shown: str,
    prices: Mapping[str, Mapping[str, float]] | None = None,
) -> ExportRow:
    """The export row of one request with its stored result (if any)."""
    base: dict[str, Any] = {
        "custom_id": request.custom_id,
        "input": shown,
        "line": request.line,
        "model": request.model,
        "endpoint": request.url,
    }
    empty = dict.fromkeys(COLUMNS[len(base) :])
    if result is None or result.state == "retry":
        return ExportRow(**{**base, **empty, "status": "pending"})
    if result.state != "ok" or not result.line:
        return ExportRow(**{**base, **empty, "status": "failed", "error": result.error})
    body = (json.loads(result.line).get("response") or {}).get("body") or {}
    model = request.model or body.get("model")
    base["model"] = model
    reply, finish = reply_of(request.url, body)
    usage = usage_of(body)
    cost = None
    price = price_for(model, prices) if usage[0] is not None else None
    if price is not None and usage[0] is not None:
        cost = usage_cost(price, usage[0], usage[2] or 0, usage[1] or 0, body.get("usage"))
    if cost is not None:  # whole units of 1e-10 dollars: no 2.1599999999999996e-05 float noise
        cost = round(cost, 10)
    return ExportRow(
        **base,
        reply=reply,
        finish_reason=finish,
        input_tokens=usage[0],
        cached_tokens=usage[1],
        output_tokens=usage[2],
        reasoning_tokens=usage[3],
        cost=cost,
        status="ok",
        error=None,
    )


def reply_of(url: str, body: dict[str, Any]) -> tuple[Any, str | None]:
    """(reply, finish reason) of a response body, by endpoint."""
    if url == "/v1/chat/completions":
        choice = (body.get("choices") or [{}])[0]
        return (choice.get("message") or {}).get("content"), choice.get("finish_reason")
    if url == "/v1/completions":
        choice = (body.get("choices") or [{}])[0]
        return choice.get("text"), choice.get("finish_reason")
    if url == "/v1/responses":
        texts = [
            part.get("text") or ""
            for item in body.get("output") or []
            for part in item.get("content") or []
            if part.get("type") == "output_text"
        ]
        reason = (body.get("incomplete_details") or {}).get("reason") or body.get("status")
        return "".join(texts), reason
    if url == "/v1/messages":  # Anthropic's Message: text blocks, and why it stopped
        texts = [
            block.get("text") or ""
            for block in body.get("content") or []
            if isinstance(block, dict) and block.get("type") == "text"
        ]
        return ("".join(texts) if texts else None), body.get("stop_reason")
    if url == "/v1/embeddings":
        data = sorted(body.get("data") or [], key=lambda d: d.get("index", 0))
        vectors = [d.get("embedding") for d in data]
        return (vectors[0] if len(vectors) == 1 else vectors), None
    if url == "/v1/moderations":
        results = [
            {"flagged": r.get("flagged"), "categories": r.get("categories")}
            for r in body.get("results") or []
        ]
        return (results[0] if len(results) == 1 else results), None
    if url == GENERATE_URL:  # Gemini: the first candidate's text parts
        candidate = (body.get("candidates") or [{}])[0]
        parts = (candidate.get("content") or {}).get("parts") or []
        return "".join(p.get("text") or "" for p in parts), candidate.get("finishReason")
    return None, None


def usage_of(body: dict[str, Any]) -> tuple[int | None, int | None, int | None, int | None]:
    """(input, cached, output, reasoning) tokens of a response body's usage."""
    usage = body.get("usage") or gemini_usage(body.get("usageMetadata")) or {}
    if isinstance(usage, dict):
        usage = anthropic_usage(usage)
    if not usage:
        return None, None, None, None
    inp = usage.get("input_tokens", usage.get("prompt_tokens"))
    out = usage.get("output_tokens", usage.get("completion_tokens"))
    in_details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
    out_details = usage.get("output_tokens_details") or usage.get("completion_tokens_details") or {}
    return inp, in_details.get("cached_tokens"), out, out_details.get("reasoning_tokens")


def write_rows(rows: Iterator[ExportRow], out: IO[str], fmt: str) -> int:
    """Write rows as JSON lines or CSV (with a header), one at a time; return how many."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell(getattr(row, c)) for c in COLUMNS])
            count += 1
        return count
    for row in rows:
        out.write(json.dumps({c: getattr(row, c) for c in COLUMNS}, ensure_ascii=False) + "\n")
        count += 1
    return count


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict | bool):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):  # plain decimals, as spreadsheets read them
        return f"{value:.12f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def _shown(path: str, root: str) -> str:
    """An input's path relative to the config's directory when it lies inside it."""
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else rel
