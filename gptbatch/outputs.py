"""Output files: each input's results in input order, and its failures, written atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gptbatch.canonical import atomic_writer
from gptbatch.errors import ConfigError
from gptbatch.spec import Spec
from gptbatch.store import Store


@dataclass(frozen=True)
class OutputSummary:
    """What was written for one input."""

    input: str
    path: str
    errors_path: str
    written: int
    failed: int
    missing: int


def output_names(inputs: tuple[Path, ...] | list[Path]) -> dict[Path, str]:
    """The output base name of each input: its file name without .jsonl, unique."""
    names: dict[Path, str] = {}
    seen: dict[str, Path] = {}
    for path in inputs:
        name = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
        if name in seen:
            raise ConfigError(
                f"inputs {seen[name]} and {path} would write the same output {name}.jsonl: "
                "rename one of them"
            )
        seen[name] = path
        names[path] = name
    return names


def write_outputs(spec: Spec, store: Store, *, skip_if: bool = False) -> list[OutputSummary]:
    """Rewrite every input's output and error file from the store, streaming.

    With skip_if (nothing changed since the last write), files that exist are left as
    they are and only counted.
    """
    summaries = []
    for path, name in output_names(spec.inputs).items():
        out_path = spec.output_dir / f"{name}.jsonl"
        err_path = spec.output_dir / f"{name}.errors.jsonl"
        if skip_if and out_path.exists() and err_path.exists():
            summaries.append(_count(store, str(path), out_path, err_path))
            continue
        written = failed = missing = 0
        with atomic_writer(out_path, "w") as out, atomic_writer(err_path, "w") as err:
            for request, result in store.request_results(str(path)):
                if result is None or result.state == "retry":
                    missing += 1
                elif result.state == "ok" and result.line is not None:
                    out.write(result.line.rstrip("\n") + "\n")
                    written += 1
                else:
                    failed += 1
                    record = {
                        "custom_id": request.custom_id,
                        "input": f"{request.path}:{request.line}",
                        "error": result.error,
                        "attempts": result.attempts,
                        "batch_id": result.batch_id,
                    }
                    if result.line:
                        record["response"] = json.loads(result.line).get("response")
                    err.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        summaries.append(
            OutputSummary(str(path), str(out_path), str(err_path), written, failed, missing)
        )
    return summaries


def _count(store: Store, path: str, out_path: Path, err_path: Path) -> OutputSummary:
    counts = store.result_counts(path)
    return OutputSummary(
        path, str(out_path), str(err_path), counts["ok"], counts["failed"], counts["missing"]
    )
