"""kill -9 at every crash point of submission and collection, and at random moments.

After every kill, before the rerun: no request was billed twice, and every output file that
exists is whole (complete JSONL lines, each a complete Batch API result of a request of its
input, in input order). After the rerun: exit 0, every request billed exactly once, every
result in its output in input order, no temp file left.
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from buildkit import (
    KILL_POINTS,
    REPO,
    Project,
    billed_twice,
    make_project,
    padded_chat,
    start_build,
    wait_until,
    write_jsonl,
)

from gptbatch.errors import EXIT_OK
from gptbatch.simulator import request_digest

# Points a single run passes only once (finish() writes the outputs once per run).
ONCE_PER_RUN = {"after_outputs"}

INPUTS = ("a.jsonl", "b.jsonl")


def kill_project(tmp_path: Path) -> tuple[dict[str, list[dict[str, Any]]], Project]:
    """Six ~100-token requests in two inputs, a queue budget of two: three batches in turn."""
    inputs = {name: [padded_chat(f"{name[0]}{i}", 90) for i in range(3)] for name in INPUTS}
    project = make_project(
        tmp_path, inputs, limits={"enqueued_tokens": 260, "safety_margin": 0, "pipeline": 1}
    )
    return inputs, project


def temp_files(root: Path) -> list[Path]:
    """Atomic-write temp files (.NAME.*.tmp) anywhere under root, state directory included."""
    return sorted(p for p in root.rglob(".*.tmp") if p.is_file())


def check_outputs_whole(project: Project, inputs: dict[str, list[dict[str, Any]]]) -> None:
    """Every output file that exists parses fully and holds whole results, in input order."""
    for name, reqs in inputs.items():
        base = name.removesuffix(".jsonl")
        by_id = {r["custom_id"]: r for r in reqs}
        order = [r["custom_id"] for r in reqs]
        out = project.out / f"{base}.jsonl"
        if out.exists():
            data = out.read_bytes()
            assert not data or data.endswith(b"\n"), f"{out} ends mid-line"
            ids = []
            for n, raw in enumerate(data.splitlines(), 1):
                line = json.loads(raw)  # raises on a torn line
                assert line["custom_id"] in by_id, f"{out}:{n}: not a request of {name}"
                assert line["id"].startswith("batch_req_") and line["error"] is None
                assert line["response"]["status_code"] == 200
                body = by_id[line["custom_id"]]["body"]
                assert request_digest(body) in json.dumps(line["response"]["body"])
                ids.append(line["custom_id"])
            assert len(ids) == len(set(ids)), f"{out}: a result written twice"
            assert ids == [c for c in order if c in set(ids)], f"{out}: not in input order"
        errors = project.out / f"{base}.errors.jsonl"
        if errors.exists():
            data = errors.read_bytes()
            assert not data or data.endswith(b"\n"), f"{errors} ends mid-line"
            for raw in data.splitlines():
                record = json.loads(raw)
                assert record["custom_id"] in by_id and record["error"]


def check_complete(project: Project, inputs: dict[str, list[dict[str, Any]]], sim: Any) -> None:
    """Everything built once: one billed success per request, outputs in order, no temp files."""
    counts = sim.journal.billed_counts()
    every = [r["custom_id"] for reqs in inputs.values() for r in reqs]
    assert billed_twice(sim) == []
    assert sorted(counts) == sorted(every), "a request was never billed (its result is lost)"
    check_outputs_whole(project, inputs)
    for name, reqs in inputs.items():
        base = name.removesuffix(".jsonl")
        assert [o["custom_id"] for o in project.output(base)] == [r["custom_id"] for r in reqs]
        assert project.errors(base) == []
    assert temp_files(project.root) == []


def killed(project: Project, crash_at: str) -> None:
    """Run a build that must die by SIGKILL at crash_at."""
    run = project.build_process(env={"GPTBATCH_CRASH_AT": crash_at}, timeout=90)
    assert run.returncode == -signal.SIGKILL, (
        f"{crash_at} was not reached (exit {run.returncode}): {run.stderr[-2000:]}"
    )


def test_every_crash_point_is_listed() -> None:
    """The list above is the engine's: a new crash point must get its kill test."""
    found = set()
    for path in (REPO / "gptbatch").rglob("*.py"):
        found |= set(re.findall(r"""crashpoint\(\s*["'](\w+)["']""", path.read_text()))
    assert found == set(KILL_POINTS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_at_each_point_then_rerun(tmp_path: Path, simulator_factory, point: str) -> None:
    simulator = simulator_factory(time_scale=1000.0)
    inputs, project = kill_project(tmp_path)
    # The first pass through the point, in a fresh build.
    killed(project, f"{point}:1")
    assert billed_twice(simulator) == []
    check_outputs_whole(project, inputs)
    if point == "mid_output_write":
        # Died between two lines of the first output: the file is not there yet, only the
        # killed run's temp file with the lines written so far.
        assert not (project.out / "a.jsonl").exists()
        (tmp,) = [p for p in temp_files(project.out) if p.name.startswith(".a.jsonl.")]
        assert tmp.read_text().count("\n") == 1
    # A later pass, in a run that is itself recovering from the first kill.
    killed(project, f"{point}:{1 if point in ONCE_PER_RUN else 2}")
    assert billed_twice(simulator) == []
    check_outputs_whole(project, inputs)
    # The rerun finishes the job.
    rerun = project.build_process(timeout=90)
    assert rerun.returncode == EXIT_OK, rerun.stderr
    check_complete(project, inputs, simulator)
    live = [b for b in simulator.service.batches() if b["status"] != "failed"]
    assert len(live) == 3, "a shard was submitted twice"


@pytest.mark.timeout(120)
def test_a_kill_mid_write_leaves_the_previous_output_byte_for_byte(
    tmp_path: Path, simulator
) -> None:
    inputs, project = kill_project(tmp_path)
    assert project.build_process().returncode == EXIT_OK
    before = {p.name: p.read_bytes() for p in project.out.glob("*.jsonl")}
    inputs["a.jsonl"] = inputs["a.jsonl"] + [padded_chat(f"a{i}", 90) for i in range(4, 6)]
    write_jsonl(project.input("a.jsonl"), inputs["a.jsonl"])
    killed(project, "mid_output_write:3")
    after = {p.name: p.read_bytes() for p in project.out.glob("*.jsonl")}
    assert after == before
    assert temp_files(project.out), "the kill did not land mid-write"
    rerun = project.build_process()
    assert rerun.returncode == EXIT_OK, rerun.stderr
    check_complete(project, inputs, simulator)


# --- random kills --------------------------------------------------------------------------


def random_kill_project(tmp_path: Path, n: int) -> tuple[dict[str, list[dict[str, Any]]], Project]:
    """n ~30-token requests in batches of 10, up to three batches in flight."""
    inputs = {"a.jsonl": [padded_chat(f"r{i:04d}", 20) for i in range(n)]}
    project = make_project(
        tmp_path,
        inputs,
        limits={"enqueued_tokens": 1000, "safety_margin": 0, "max_requests_per_batch": 10},
    )
    return inputs, project


def kill_at_random(
    project: Project, sim: Any, kills: int, rng: random.Random, most: float = 1.0
) -> int:
    """Start the build and SIGKILL it at a random moment of its work, `kills` times.

    Each run is killed a random 0..`most` real seconds after its first API call (a kill
    during interpreter start-up would test nothing). Returns how many runs were still
    running when their kill came.
    """
    landed = 0
    for _ in range(kills):
        calls = len(sim.journal.calls)
        proc = start_build(project)
        wait_until(lambda c=calls, p=proc: len(sim.journal.calls) > c or p.poll() is not None, 60)
        time.sleep(rng.uniform(0.0, most))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.communicate(timeout=60)
    return landed


@pytest.mark.timeout(240)
def test_ten_random_kills_of_one_long_build(tmp_path: Path, simulator_factory) -> None:
    # Slow enough that a run outlives its kill: the build's own work got faster.
    sim = simulator_factory(time_scale=20.0)
    inputs, project = random_kill_project(tmp_path, 300)
    landed = kill_at_random(project, sim, 10, random.Random(20260101))
    assert landed == 10, "the build finished before all ten kills: slow the simulator down"
    assert sim.journal.billed, "no work was done between the kills"
    assert billed_twice(sim) == []
    check_outputs_whole(project, inputs)
    final = project.build_process(timeout=180)
    assert final.returncode == EXIT_OK, final.stderr
    check_complete(project, inputs, sim)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fifty_random_kills_of_one_long_build(tmp_path: Path, simulator_factory) -> None:
    sim = simulator_factory(time_scale=10.0)
    inputs, project = random_kill_project(tmp_path, 600)
    landed = kill_at_random(project, sim, 50, random.Random(20260102), most=0.6)
    assert landed == 50
    assert billed_twice(sim) == []
    check_outputs_whole(project, inputs)
    final = project.build_process(timeout=600)
    assert final.returncode == EXIT_OK, final.stderr
    check_complete(project, inputs, sim)
