"""Output files: each input's results in input order, and its failures, written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptbatch.canonical import atomic_writer
from gptbatch.crash import armed, crashpoint
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


def output_names(inputs: Sequence[Path]) -> dict[Path, str]:
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


def output_paths(inputs: Sequence[Path], output_dir: Path) -> dict[Path, tuple[Path, Path]]:
    """Each input's (output, errors) paths; ConfigError if any is an input or shared.

    Checked before anything is submitted: a result file written over an input (output_dir
    holding the inputs, or inputs named x.jsonl and x.errors.jsonl) would destroy it.
    """
    paths = {
        path: (output_dir / f"{name}.jsonl", output_dir / f"{name}.errors.jsonl")
        for path, name in output_names(inputs).items()
    }
    check_targets(inputs, [(p, t) for p, targets in paths.items() for t in targets])
    return paths


def check_targets(inputs: Sequence[Path], targets: Sequence[tuple[Path, Path]]) -> None:
    """Refuse (input, target) pairs where a target is an input or another input's target."""
    sources = {_identity(p): p for p in inputs}
    owner: dict[str, Path] = {}
    problems = []
    for path, target in targets:
        ident = _identity(target)
        if ident in sources:
            problems.append(
                f"{target} would be written with results of {path}, but it is an input: "
                "move output_dir away from the inputs, or rename the input"
            )
        elif ident in owner:
            problems.append(
                f"inputs {owner[ident]} and {path} would both write {target}: rename one of them"
            )
        owner.setdefault(ident, path)
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "\n".join(problems))


def _identity(path: Path) -> str:
    """A path as the file system resolves it (symlinks and .. followed)."""
    return os.path.realpath(path)


def write_outputs(spec: Spec, store: Store, *, skip_if: bool = False) -> list[OutputSummary]:
    """Rewrite every input's output and error file from the store, streaming.

    With skip_if (nothing changed since the last write), files that exist are left as
    they are and only counted.
    """
    summaries = []
    for path, (out_path, err_path) in output_paths(spec.inputs, spec.output_dir).items():
        if skip_if and out_path.exists():
            summaries.append(_count(store, str(path), out_path, err_path))
            continue
        written = failed = missing = 0
        crash = armed("mid_output_write")
        with atomic_writer(out_path, "w") as out, _ErrorFile(err_path) as err:
            for request, result in store.request_results(str(path)):
                if crash and written:
                    out.flush()
                    crashpoint("mid_output_write")
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


class _ErrorFile:
    """An errors file written atomically only if something failed; else any old one goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Any = None
        self._file: Any = None

    def write(self, text: str) -> None:
        if self._file is None:
            self._writer = atomic_writer(self.path, "w")
            self._file = self._writer.__enter__()
        self._file.write(text)

    def __enter__(self) -> _ErrorFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._writer is not None:
            self._writer.__exit__(*exc)
        elif exc[0] is None:
            self.path.unlink(missing_ok=True)  # nothing failed: no empty errors file


def _count(store: Store, path: str, out_path: Path, err_path: Path) -> OutputSummary:
    counts = store.result_counts(path)
    return OutputSummary(
        path, str(out_path), str(err_path), counts["ok"], counts["failed"], counts["missing"]
    )
