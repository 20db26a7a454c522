"""The Python API for notebooks and scripts: load a project, build it, read its results.

    import gptbatch
    project = gptbatch.load("batch.yaml", simulate=True)
    summary = project.build(progress=lambda kind, fields: print(kind, fields))
    for row in project.results("sentiment"):
        ...

The same engine as `gptbatch build`: content keys, the queue, crash safety, never paying
twice. Nothing here prints; errors are gptbatch.errors exceptions with the CLI's messages.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptbatch.config.rehearsal import rehearsal
from gptbatch.config.spec import Spec, load_spec
from gptbatch.errors import UsageError

if TYPE_CHECKING:
    from gptbatch.commands.status import ProjectStatus
    from gptbatch.engine.summary import BuildSummary

Progress = Callable[[str, dict[str, Any]], None]


class _CallbackReporter:
    """Hands every build event to a callback: (kind, fields), as `build --json` prints them."""

    def __init__(self, callback: Progress | None) -> None:
        self.callback = callback

    def event(self, kind: str, **fields: Any) -> None:
        if self.callback is not None:
            self.callback(kind, fields)


@dataclass(frozen=True)
class Project:
    """A loaded batch.yaml. simulate: every call works on the rehearsal (as --simulate)."""

    spec: Spec
    simulate: bool = False

    @property
    def output_dir(self) -> Path:
        """Where outputs and state go (<output_dir>-simulated for a rehearsal)."""
        return self._spec().output_dir

    def build(
        self,
        *,
        wait: bool = True,
        force: bool = False,
        retry_failed: bool = False,
        keep_going: bool = False,
        max_cost: float | None = None,
        only: list[str] | None = None,
        progress: Progress | None = None,
    ) -> BuildSummary:
        """Build what is missing, as `gptbatch build` does; the last round's BuildSummary.

        progress(kind, fields) receives every event (`submitted`, `status`, `collected`, ...).
        max_cost caps this run's spend in US dollars (as --max-cost); only names inputs (paths
        or data target names) to build alone. Steps (`data: <target>`) build as the CLI
        builds them: a step's rows are sent as their upstream answers arrive, while the
        upstream still runs (engine/steps.py). force and retry_failed act on a step in its
        own round, once its upstream is built (so a forced step is sent over its upstream's
        new answers, once); with wait=False or max_cost, only the first round runs, and
        steps are not forced.
        """
        from gptbatch.engine.steps import has_steps
        from gptbatch.engine.tables import stale_steps, step_depths

        flags, rounds = (force, retry_failed), 0
        while True:
            # Loaded each round: data targets render into the build's state (load() wrote
            # nothing), and a step renders again from its upstream's new answers.
            spec = load_spec(self.spec.path, simulate=self.simulate, build=True)
            chosen = tuple(self._input(name, spec) for name in only) if only else None
            plain = wait and max_cost is None and not force and not retry_failed
            if plain and rounds == 0 and has_steps(spec, chosen):
                return self._build_in_passes(spec, chosen, only, keep_going, progress)
            # -B and retry_failed act on one depth of steps a round, each once its upstream
            # is built (engine/tables.step_depths): never on requests about to be replaced.
            depths = step_depths(spec, chosen) if any(flags) else []
            forced = depths[rounds] if rounds < len(depths) else ()
            force, retry_failed = flags if forced else (False, False)
            summary = self._build_once(
                spec, wait, force, retry_failed, keep_going, max_cost, chosen, progress, forced
            )
            rounds += 1
            if (
                not wait
                or max_cost is not None
                or summary.exit_code not in (0, 4)
                or rounds > len(spec.data_targets)
                or (not stale_steps(spec, None, chosen) and rounds >= len(depths))
            ):
                return summary

    def _build_in_passes(
        self,
        spec: Spec,
        chosen: tuple[Path, ...] | None,
        only: list[str] | None,
        keep_going: bool,
        progress: Progress | None,
    ) -> BuildSummary:
        """A build with steps, in passes (engine/steps.py), as `gptbatch build` does it."""
        from gptbatch.api.connect import remote_for
        from gptbatch.engine.steps import build_in_passes

        def load() -> tuple[Spec, tuple[Path, ...] | None]:
            loaded = load_spec(self.spec.path, simulate=self.simulate, build=True)
            return loaded, tuple(self._input(n, loaded) for n in only) if only else None

        with remote_for(spec, self.simulate) as (used, remote):
            summary, _ = build_in_passes(
                used, chosen, load, remote, _CallbackReporter(progress), keep_going=keep_going
            )
        return summary

    def _build_once(
        self,
        spec: Spec,
        wait: bool,
        force: bool,
        retry_failed: bool,
        keep_going: bool,
        max_cost: float | None,
        chosen: tuple[Path, ...] | None,
        progress: Progress | None,
        forced: tuple[Path, ...] = (),
    ) -> BuildSummary:
        from gptbatch.api.connect import remote_for
        from gptbatch.engine.build import run_build

        if max_cost is not None:
            spec = dataclasses.replace(
                spec,
                limits=dataclasses.replace(
                    spec.limits, max_cost=max_cost, max_cost_from="max_cost="
                ),
            )
        with remote_for(spec, self.simulate) as (used, remote):
            return run_build(
                used,
                remote,
                _CallbackReporter(progress),
                wait=wait,
                keep_going=keep_going,
                force=force,
                retry_failed=retry_failed,
                only=chosen,
                forced=forced,
            )

    def status(self) -> ProjectStatus:
        """Where the project stands (offline): done, failed, pending, stale inputs."""
        from gptbatch.commands.status import project_status
        from gptbatch.state.store import Store, state_dir

        spec = self._spec()
        directory = state_dir(spec.output_dir)
        if not (directory / "state.db").exists():
            return project_status(spec, None)
        store = Store(directory)
        try:
            return project_status(spec, store)
        finally:
            store.close()

    def inputs(self) -> list[str]:
        """The names results() accepts: data target names, then request files' paths."""
        rendered = {os.path.realpath(p) for p in self.spec.targets.values()}
        return [*self.spec.targets] + [
            str(p) for p in self.spec.inputs if os.path.realpath(p) not in rendered
        ]

    def results(self, name: str) -> Iterator[dict[str, Any]]:
        """An input's result lines as dicts, in input order (Batch API output objects).

        name: a data target's name, or a request file (a path, or its file name). Nothing
        is yielded before a build wrote the output.
        """
        from gptbatch.engine.outputs import output_paths

        spec = self._spec()
        path = self._input(name)
        output, _ = output_paths(spec.inputs, spec.output_dir)[path]
        if not output.exists():
            return
        with open(output, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def answers(self, name: str) -> Iterator[dict[str, Any]]:
        """Each request's answer as a dict, in input order.

        A data target: its table's rows (<output_dir>/<name>.csv: the data columns, `answer`
        and one column per schema property, as strings; empty where there is no answer yet).
        A request file: {custom_id, answer, error} from its results (answer: the reply's
        text; None for embeddings and failures).
        """
        import csv

        from gptbatch.inputs.answers import answer_text

        spec = self._spec()
        path = self._input(name)
        target = next((t for t, p in spec.targets.items() if p == path), None)
        if target is not None:
            table = spec.output_dir / f"{target}.csv"
            if table.exists():
                with open(table, encoding="utf-8", newline="") as f:
                    yield from csv.DictReader(f)
            return
        for line in self.results(name):
            yield {
                "custom_id": line.get("custom_id"),
                "answer": answer_text(line),
                "error": line.get("error"),
            }

    def dataframe(self, name: str) -> Any:
        """answers(name) as a pandas DataFrame (needs pandas: `pip install pandas`)."""
        try:
            import pandas
        except ImportError:
            raise UsageError(
                "dataframe() needs pandas: `pip install pandas`, or read answers() as dicts"
            ) from None
        return pandas.DataFrame(list(self.answers(name)))

    def errors(self, name: str) -> Iterator[dict[str, Any]]:
        """An input's requests that failed for good, as dicts (its errors file)."""
        from gptbatch.engine.outputs import output_paths

        spec = self._spec()
        _, errors = output_paths(spec.inputs, spec.output_dir)[self._input(name)]
        if not errors.exists():
            return
        with open(errors, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def _spec(self) -> Spec:
        return rehearsal(self.spec) if self.simulate else self.spec

    def _input(self, name: str, spec: Spec | None = None) -> Path:
        """The input a name means: a data target, a path (from here or the config), a file name."""
        spec = spec or self.spec
        if name in spec.targets:
            return spec.targets[name]
        known = {os.path.realpath(p): p for p in spec.inputs}
        for candidate in (Path(name), spec.root / name):
            found = known.get(os.path.realpath(candidate))
            if found is not None:
                return found
        by_name = [p for p in spec.inputs if p.name == name or p.stem == name]
        if len(by_name) == 1:
            return by_name[0]
        raise UsageError(
            f"{name}: not an input of {self.spec.path.name} (its inputs: "
            f"{', '.join(self.inputs()) or 'none'})"
        )


def load(config: str | os.PathLike[str] | None = None, *, simulate: bool = False) -> Project:
    """Load batch.yaml (default: ./batch.yaml) as a Project; ConfigError/InputError if bad.

    simulate: build against the built-in simulator and read the rehearsal's outputs, as
    `--simulate` does (no API key, no cost).
    """
    path = None if config is None else Path(config)
    return Project(load_spec(path, simulate=simulate), simulate=simulate)
