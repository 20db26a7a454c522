"""Seeded chaos: a random mix of every command, lost state, kills, edits and API faults.

    python bench/chaos.py [--seeds 6] [--steps 50] [--first-seed 0] [--verbose]

For each seed, one project (three inputs, no `project:` key, so its id is the default one)
is built against one simulator, whose journal records every request it billed. The seed
picks, in order, steps among: full builds, subset builds (`build CONFIG INPUT`), `-B` (full
or subset), `--retry-failed`, a tiny `--max-cost` (alone or with -B), `--no-wait`, cancel,
clean, gc, `export -o` (sometimes, by mistake, onto an input, an output or the state
database), `init --force` (then the driver puts back its inputs and settings, keeping the
project id init wrote, as a user would), lost state (rm -rf the state dir), kills
(SIGKILL, SIGINT or SIGTERM of a build subprocess at a random moment), input edits
(append, delete or rewrite lines), API faults (5xx and 429 answers, dropped downloads, a
lost reply to batches.create, failed/expired/cancelled batches, failing requests, a full
queue) and days passing at the API. The simulator's clock starts six days behind the local
one; "days pass" steps move it forward, so early batches are days old by the end.

Then, with the faults disarmed, a final full build (and `--retry-failed` if it left
failures), and one more build that must bill nothing. Invariants:

- duplicates: no request billed more often than once plus the number of `-B` steps that
  submitted it (a forced run may re-bill what it sends, once; nothing else may);
- lost: every current request has exactly one result line in its output, in input order,
  answering the request as it is now;
- inputs: byte-identical to what the driver last wrote (checked after every step);
- no-op: the build after the final one bills nothing;
- export: after it, `export` gives one row per current request, in input order, all ok.

An edited line always gets a new custom_id, so the journal's per-custom_id counts never
mistake a changed request for a re-bill. Prints one summary line per seed (and the steps of
a failing one); exits 1 if any seed broke an invariant. tests/functional/test_chaos.py runs
short seeds of the same driver in the suite; docs/reliability.md has the figures.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory comes first on sys.path, and bench/queue.py would
# shadow the standard library's `queue` (which the HTTP client imports).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from gptbatch.cli import main as gptbatch_main  # noqa: E402
from gptbatch.simulator import (  # noqa: E402
    ApiError,
    Fault,
    SimConfig,
    Simulator,
    request_digest,
)

REPO = Path(__file__).resolve().parents[1]
INPUTS = ("a.jsonl", "b.jsonl", "c.jsonl")
DAY = 86_400.0
SKEW_DAYS = 6.0  # the simulator's clock starts this far behind the local one
TINY_COST = "0.0000001"  # USD: less than any request, so a build that needs to send stops
WINDOW = 3600.0  # simulated completion window: batches finish in ~30 s, a stalled one expires
NUDGE_EVERY, NUDGE = 1.5, 1200.0  # while a command waits, 20 simulated minutes per 1.5 s
HANG = 90.0  # real seconds after which a command is interrupted (SIGINT) and called hung

# Step kinds and how often the seed picks each.
WEIGHTS: dict[str, int] = {
    "build": 9,
    "subset": 8,
    "force": 6,
    "retry_failed": 3,
    "max_cost": 6,
    "no_wait": 4,
    "kill": 8,
    "cancel": 3,
    "clean": 2,
    "gc": 2,
    "export": 2,
    "init_force": 3,
    "lost_state": 5,
    "edit": 8,
    "fault": 8,
    "days": 3,
}


@dataclass
class Step:
    """One step the driver ran, for the step list printed on failure."""

    n: int
    kind: str
    what: str
    rc: int | None = None
    billed: int = 0  # requests the simulator billed during the step
    rebilled: int = 0  # extra billings of the batches this step created (see Chaos.blame)
    created: int = 0  # batches created during the step
    tail: str = ""  # the end of what the command printed

    def line(self) -> str:
        rc = "" if self.rc is None else f" rc={self.rc}"
        return (
            f"{self.n:3d}. {self.kind:<12} {self.what}{rc} billed+{self.billed} "
            f"batches+{self.created}{f'  RE-BILLED {self.rebilled}' if self.rebilled > 0 else ''}"
        )


@dataclass
class ChaosResult:
    """What one seed did and which invariants it broke."""

    seed: int
    n_steps: int  # the seeded steps (the final builds are listed after them)
    steps: list[Step]
    billed: int = 0
    allowed: int = 0  # re-bills the -B steps asked for
    duplicates: dict[str, int] = field(default_factory=dict)  # custom_id -> extra billings
    lost: int = 0  # current requests without their one result line, in order
    lost_detail: list[str] = field(default_factory=list)  # "output: what is wrong"
    export_problems: list[str] = field(default_factory=list)
    clobbered: list[str] = field(default_factory=list)  # export -o wrote over these
    changed_inputs: list[str] = field(default_factory=list)
    final_rc: list[int] = field(default_factory=list)
    noop_billed: int = 0
    hung: list[str] = field(default_factory=list)  # commands the watchdog had to interrupt
    wall: float = 0.0
    final_tail: str = ""

    @property
    def ok(self) -> bool:
        return (
            not self.duplicates
            and not self.lost
            and not self.lost_detail
            and not self.export_problems
            and not self.clobbered
            and not self.changed_inputs
            and not self.noop_billed
            and not self.hung
        )

    def summary(self) -> str:
        return (
            f"seed {self.seed}: steps {self.n_steps}, billed {self.billed}, "
            f"allowed re-bills {self.allowed}, duplicates {sum(self.duplicates.values())}, "
            f"lost {self.lost}, export problems {len(self.export_problems)}, "
            f"inputs changed {len(self.changed_inputs)}, clobbered {len(self.clobbered)}, "
            f"no-op billed {self.noop_billed}, hung {len(self.hung)}, "
            f"final rc {self.final_rc}, {self.wall:.1f} s"
            f"{'' if self.ok else '  FAILED'}"
        )

    def report(self) -> str:
        """The summary, what broke, and every step: enough to rerun and read a failure."""
        lines = [
            self.summary(),
            f"rerun: python bench/chaos.py --first-seed {self.seed} "
            f"--seeds 1 --steps {self.n_steps} --verbose",
        ]
        if self.duplicates:
            shown = sorted(self.duplicates.items())[:20]
            lines.append(f"billed beyond what -B asked for: {dict(shown)}")
        lines += [f"lost: {x}" for x in self.lost_detail[:20]]
        lines += [f"export after the final build: {x}" for x in self.export_problems]
        lines += [f"export -o wrote over (it must refuse): {x}" for x in self.clobbered]
        lines += [f"input changed by the tool: {x}" for x in self.changed_inputs]
        lines += [f"hung (interrupted after {HANG:.0f} s): {x}" for x in self.hung]
        lines.append("steps:")
        lines += [s.line() for s in self.steps]
        if self.final_tail:
            lines.append(f"final build said: {self.final_tail}")
        return "\n".join(lines)


def request(custom_id: str, rng: random.Random) -> dict[str, Any]:
    """A small chat request (20-60 prompt tokens: far below any queue limit a fault states)."""
    text = f"{custom_id}: " + "word " * rng.randint(10, 50)
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
    }


def settings() -> dict[str, Any]:
    """batch.yaml without `project:` (the default id is derived from output_dir and inputs)."""
    return {
        "version": 1,
        "inputs": [f"inputs/{name}" for name in INPUTS],
        "output_dir": "out",
        "limits": {"max_requests_per_batch": 4, "pipeline": 2},
        "polling": {"initial_seconds": 0.02, "max_seconds": 0.2, "factor": 1.5},
    }


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for in-process commands; put the old values back after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Chaos:
    """The driver: one project, one simulator, a seeded list of steps, then the invariants."""

    def __init__(
        self, root: Path, sim: Simulator, seed: int, steps: int, echo: bool = False
    ) -> None:
        self.root = root
        self.sim = sim
        self.seed = seed
        self.n_steps = steps
        self.echo = echo
        self.hung: list[str] = []
        self.rng = random.Random(seed)
        self.config = root / "batch.yaml"
        self.inputs: dict[str, list[dict[str, Any]]] = {}
        self.written: dict[str, bytes] = {}  # what the driver last wrote to each input
        self.next_id = 0
        self.steps: list[Step] = []
        self.allowed: Counter[str] = Counter()
        self.created_by: dict[str, Step] = {}  # batch id -> the step that created it
        self.changed: list[str] = []
        self.flagged: set[str] = set()  # inputs found changed since the driver wrote them
        self.clobbered: list[str] = []  # files an `export -o` overwrote instead of refusing
        self.advanced = 0.0  # simulated seconds the "days" steps moved the API's clock
        self.env = {
            "OPENAI_BASE_URL": sim.base_url,
            "OPENAI_API_KEY": "sk-chaos",
            "GPTBATCH_LOCK_DIR": str(root / "locks"),
            "GPTBATCH_CACHE_DIR": os.environ.get("GPTBATCH_CACHE_DIR", str(root / "cache")),
        }

    # --- the project -----------------------------------------------------------------------

    def fresh(self, stem: str) -> dict[str, Any]:
        self.next_id += 1
        return request(f"{stem}{self.next_id:04d}", self.rng)

    def write_input(self, name: str) -> None:
        data = "".join(json.dumps(r) + "\n" for r in self.inputs[name]).encode()
        path = self.root / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.written[name] = data
        self.flagged.discard(name)

    def write_config(self, project: str | None = None) -> None:
        doc = settings()
        if project is not None:
            doc["project"] = project
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False))

    def setup(self) -> None:
        for name in INPUTS:
            stem = name[0]
            self.inputs[name] = [self.fresh(stem) for _ in range(self.rng.randint(5, 9))]
            self.write_input(name)
        self.write_config()

    def check_inputs(self, step: Step) -> None:
        """Note each input that differs from what the driver last wrote (once per change)."""
        for name, data in self.written.items():
            path = self.root / "inputs" / name
            now = path.read_bytes() if path.exists() else None
            if now != data and name not in self.flagged:
                self.flagged.add(name)
                self.changed.append(f"inputs/{name} at step {step.n} ({step.what})")

    # --- running commands -------------------------------------------------------------------

    def cli(self, *args: str) -> tuple[int, str]:
        """Run a gptbatch command in this process (fast); return (exit code, output tail).

        While it runs, a watchdog moves the API's clock on (a batch stalled by a fault
        expires in seconds, not in its window of real time), and interrupts it as Ctrl-C
        would after HANG seconds: a hang is reported, not waited out.
        """
        out = io.StringIO()
        done = threading.Event()
        interrupted: list[bool] = []

        def watchdog() -> None:
            started = time.monotonic()
            while not done.wait(NUDGE_EVERY):
                if time.monotonic() - started > HANG:
                    interrupted.append(True)
                    import _thread

                    _thread.interrupt_main(signal.SIGINT)
                    return
                self.sim.clock.advance(NUDGE)
                self.advanced += NUDGE

        dog = threading.Thread(target=watchdog, daemon=True)
        dog.start()
        try:
            with (
                environ(self.env),
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(out),
            ):
                try:
                    rc = gptbatch_main(list(args))
                except SystemExit as exc:  # argparse errors
                    rc = exc.code if isinstance(exc.code, int) else 2
                except KeyboardInterrupt:  # the watchdog's, landing outside the CLI's handler
                    rc = 130
        finally:
            done.set()
            dog.join()
        if interrupted:
            self.hung.append(" ".join(a.replace(str(self.root) + "/", "") for a in args))
        return rc, out.getvalue()[-600:]

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """Start a gptbatch command as a subprocess (to be signalled)."""
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO)}
        return subprocess.Popen(
            [sys.executable, "-m", "gptbatch", *args],
            env=env,
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def batch_ids(self) -> set[str]:
        return {b["id"] for b in self.sim.service.batches()}

    def members(self, batch_ids: set[str]) -> set[str]:
        """custom_ids in the input files of these batches."""
        ids: set[str] = set()
        for b in self.sim.service.batches():
            if b["id"] in batch_ids:
                try:
                    data = self.sim.service.file_content(b["input_file_id"])
                except ApiError as exc:  # deleted or expired already: say so, allow nothing
                    print(f"chaos: members of {b['id']} unreadable: {exc}", file=sys.stderr)
                    continue
                ids.update(json.loads(x)["custom_id"] for x in data.splitlines() if x.strip())
        return ids

    def settle(self) -> None:
        """Let the server finish calls a killed client left open before counting batches."""
        deadline = time.monotonic() + 5
        while self.sim.open_connections and time.monotonic() < deadline:
            time.sleep(0.02)

    # --- steps ------------------------------------------------------------------------------

    def targets(self) -> list[str]:
        k = self.rng.randint(1, len(INPUTS) - 1)
        return [str(self.root / "inputs" / n) for n in sorted(self.rng.sample(INPUTS, k))]

    def build_args(self, step: Step, *flags: str, subset: bool | None = None) -> list[str]:
        if subset is None:
            subset = self.rng.random() < 0.4
        chosen = self.targets() if subset else []
        step.what = " ".join(
            ["build", *(f"inputs/{Path(t).name}" for t in chosen), *flags]
        ).replace(TINY_COST, "TINY")
        return ["build", str(self.config), *chosen, *flags]

    def run_step(self, step: Step) -> None:
        rng = self.rng
        kind = step.kind
        if kind == "build":
            step.rc, step.tail = self.cli(*self.build_args(step, subset=False))
        elif kind == "subset":
            step.rc, step.tail = self.cli(*self.build_args(step, subset=True))
        elif kind == "force":
            step.rc, step.tail = self.cli(*self.build_args(step, "-B"))
        elif kind == "retry_failed":
            step.rc, step.tail = self.cli(*self.build_args(step, "--retry-failed"))
        elif kind == "max_cost":
            flags = ["-B"] if rng.random() < 0.6 else []
            step.rc, step.tail = self.cli(*self.build_args(step, *flags, "--max-cost", TINY_COST))
        elif kind == "no_wait":
            flags = ["-B"] if rng.random() < 0.3 else []
            step.rc, step.tail = self.cli(*self.build_args(step, *flags, "--no-wait"))
        elif kind == "kill":
            self.kill(step)
        elif kind == "cancel":
            step.what = "cancel"
            step.rc, step.tail = self.cli("cancel", str(self.config))
        elif kind == "clean":
            step.what = "clean --yes"
            step.rc, step.tail = self.cli("clean", str(self.config), "--yes")
        elif kind == "gc":
            step.what = "gc"
            step.rc, step.tail = self.cli("gc", str(self.config))
        elif kind == "export":
            # Now and then a slip of the user's: -o naming an input, an output or the state,
            # which export must refuse (the invariants see what it overwrote).
            target = rng.choice(
                ["export.jsonl"] * 4
                + [f"inputs/{rng.choice(INPUTS)}", "out/a.jsonl", "out/.gptbatch/state.db"]
            )
            step.what = f"export -o {target}"
            path = self.root / target
            before = path.read_bytes() if path.exists() else None
            step.rc, step.tail = self.cli("export", str(self.config), "-o", str(path))
            after = path.read_bytes() if path.exists() else None
            if target != "export.jsonl" and after != before:
                self.clobbered.append(f"{target} at step {step.n} (export exit {step.rc})")
        elif kind == "init_force":
            step.rc, step.tail = self.cli("init", "--force", str(self.root))
            # A user puts back their inputs and settings; the project id init wrote stays.
            doc = yaml.safe_load(self.config.read_text()) or {}
            project = doc.get("project") if isinstance(doc, dict) else None
            self.write_config(project if isinstance(project, str) else None)
            step.what = f"init --force (project: {project})"
        elif kind == "lost_state":
            step.what = "rm -rf out/.gptbatch"
            shutil.rmtree(self.root / "out" / ".gptbatch", ignore_errors=True)
        elif kind == "edit":
            self.edit(step)
        elif kind == "fault":
            self.fault(step)
        elif kind == "days":
            room = SKEW_DAYS * DAY - self.advanced - 6 * 3600  # stay behind the local clock
            seconds = min(rng.uniform(0.5, 2.5) * DAY, max(room, 0.0))
            self.sim.clock.advance(seconds)
            self.advanced += seconds
            step.what = f"{seconds / DAY:.1f} days pass at the API"
        else:  # pragma: no cover
            raise ValueError(kind)

    def kill(self, step: Step) -> None:
        rng = self.rng
        r = rng.random()
        flags = ["-B"] if r < 0.3 else ["--retry-failed"] if r < 0.4 else []
        args = self.build_args(step, *flags)
        sig = rng.choice([signal.SIGKILL] * 4 + [signal.SIGINT, signal.SIGTERM])
        delay = rng.uniform(0.0, 0.8)
        calls = len(self.sim.journal.calls)
        proc = self.spawn(*args)
        deadline = time.monotonic() + 30
        while len(self.sim.journal.calls) <= calls and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        time.sleep(delay)
        landed = proc.poll() is None
        if landed:
            proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        step.rc = proc.returncode
        step.tail = (err or "")[-600:]
        how = f"{signal.Signals(sig).name} after {delay:.2f} s" if landed else "finished first"
        step.what += f" ({how})"
        self.settle()

    def edit(self, step: Step) -> None:
        rng = self.rng
        name = rng.choice(INPUTS)
        rows = self.inputs[name]
        op = rng.choice(["append", "delete", "rewrite"])
        k = rng.randint(1, 3)
        if op == "append":
            rows.extend(self.fresh(name[0]) for _ in range(k))
        elif op == "delete":
            k = min(k, len(rows) - 1)
            for _ in range(k):
                rows.pop(rng.randrange(len(rows)))
        else:  # a changed line is a new request: new content, new custom_id
            for i in rng.sample(range(len(rows)), min(k, len(rows))):
                rows[i] = self.fresh(name[0])
        self.write_input(name)
        step.what = f"{op} {k} line(s) of inputs/{name}"

    def fault(self, step: Step) -> None:
        rng = self.rng
        some = rng.choice([r["custom_id"] for rows in self.inputs.values() for r in rows])
        after = rng.randint(0, 3)
        faults = [
            ("500 on batches.create", Fault.http(500, method="POST", path="/v1/batches")),
            (
                "429 x2 on GET batches",
                Fault.http(429, method="GET", path="/v1/batches*", count=2, retry_after=0.1),
            ),
            ("500 on upload", Fault.http(500, method="POST", path="/v1/files")),
            ("dropped download", Fault.drop_download(after_bytes=rng.randint(0, 400))),
            ("lost reply to batches.create", Fault.lost_reply()),
            (f"500 once for {some}", Fault.request_error(some, status=500, attempts=1)),
            (f"400 once for {some}", Fault.request_error(some, status=400, attempts=1)),
            ("batch fails", Fault.batch_fail()),
            (f"batch expires after {after}", Fault.batch_expire(after_requests=after)),
            (f"batch cancelled after {after}", Fault.batch_cancel(after_requests=after)),
            ("queue full (limit 300)", Fault.queue_full(limit=300)),
        ]
        what, fault = rng.choice(faults)
        self.sim.add_fault(fault)
        step.what = f"arm fault: {what}"

    # --- the run and its invariants ---------------------------------------------------------

    def pick(self) -> str:
        kinds = list(WEIGHTS)
        return self.rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]

    def run(self) -> ChaosResult:
        started = time.monotonic()
        self.setup()
        for n in range(1, self.n_steps + 1):
            self.measured(Step(n, "build" if n == 1 else self.pick(), ""), self.run_step)
        return self.finish(started)

    def measured(self, step: Step, action: Any) -> Step:
        """Run one step; note what it billed and created; check the inputs; log it."""
        billed, before = len(self.sim.journal.billed), self.batch_ids()
        action(step)
        created = self.batch_ids() - before
        step.created = len(created)
        if "-B" in step.what.split():
            # A forced run may bill each request it submits once more; only once.
            self.allowed.update(self.members(created))
        self.created_by.update(dict.fromkeys(created, step))
        step.billed = len(self.sim.journal.billed) - billed
        self.check_inputs(step)
        self.steps.append(step)
        if self.echo:
            print(step.line(), file=sys.stderr, flush=True)
        return step

    def blame(self) -> None:
        """Mark each step with the extra billings of the batches it created.

        Per request, in billing order: the first billing is due; a later one is due if its
        batch came from a -B step that had not yet re-billed this request; any other is a
        candidate. A request billed n times with a allowed re-bills has n - 1 - a extra
        billings: its earliest candidates, charged to the steps whose batches they were.
        """
        every = self.sim.journal.billed
        counts = Counter(b.custom_id for b in every)
        extra = {c: n - 1 - self.allowed[c] for c, n in counts.items() if n > 1 + self.allowed[c]}
        seen: Counter[str] = Counter()
        used: set[tuple[int, str]] = set()  # (-B step, custom_id) allowances spent
        for b in every:
            seen[b.custom_id] += 1
            step = self.created_by.get(b.batch_id)
            if seen[b.custom_id] == 1 or extra.get(b.custom_id, 0) <= 0:
                continue
            if step is not None and "-B" in step.what.split() and (step.n, b.custom_id) not in used:
                used.add((step.n, b.custom_id))
                continue
            extra[b.custom_id] -= 1
            if step is not None:
                step.rebilled += 1

    def finish(self, started: float) -> ChaosResult:
        result = ChaosResult(self.seed, self.n_steps, self.steps)
        self.sim.clear_faults()

        def final(*flags: str) -> Step:
            def action(step: Step) -> None:
                step.what = " ".join(["build", *flags, "(faults off)"])
                step.rc, step.tail = self.cli("build", str(self.config), *flags)

            step = self.measured(Step(len(self.steps) + 1, "final", ""), action)
            result.final_rc.append(step.rc or 0)
            return step

        step = final()
        if step.rc != 0:
            step = final("--retry-failed")
        result.final_tail = step.tail if step.rc != 0 else ""
        result.noop_billed = final().billed

        counts = self.sim.journal.billed_counts()
        result.billed = sum(counts.values())
        result.allowed = sum(self.allowed.values())
        result.duplicates = {
            cid: n - 1 - self.allowed[cid] for cid, n in counts.items() if n > 1 + self.allowed[cid]
        }
        result.lost, result.lost_detail = self.lost_results()
        result.export_problems = self.export_problems()
        self.blame()
        result.changed_inputs = self.changed
        result.clobbered = self.clobbered
        result.hung = self.hung
        result.wall = time.monotonic() - started
        return result

    def export_problems(self) -> list[str]:
        """`export` after the final build: one ok row per current request, in input order."""
        path = self.root / "export-final.jsonl"
        rc, tail = self.cli("export", str(self.config), "-o", str(path))
        if rc != 0:
            return [f"export exit {rc}: {tail.strip()[-200:]}"]
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        want = [r["custom_id"] for name in INPUTS for r in self.inputs[name]]
        got = [r.get("custom_id") for r in rows]
        problems = []
        if got != want:
            problems.append(f"export: {len(got)} rows for {len(want)} requests or out of order")
        not_ok = [r.get("custom_id") for r in rows if r.get("status") != "ok"]
        if not_ok:
            problems.append(f"export: {len(not_ok)} rows not ok: {not_ok[:8]}")
        return problems

    def lost_results(self) -> tuple[int, list[str]]:
        """Current requests without exactly one matching result line in input order (count,
        and what is wrong with each output)."""
        lost: list[str] = []
        count = 0
        for name, rows in self.inputs.items():
            out = self.root / "out" / f"{Path(name).stem}.jsonl"
            lines = out.read_text().splitlines() if out.exists() else []
            got: list[str] = []
            by_id = {r["custom_id"]: r for r in rows}
            for n, raw in enumerate(lines, 1):
                try:
                    line = json.loads(raw)
                    req = by_id[line["custom_id"]]
                    good = line["response"]["status_code"] == 200 and request_digest(
                        req["body"]
                    ) in json.dumps(line["response"]["body"])
                except (ValueError, KeyError, TypeError):
                    good = False
                if not good:
                    lost.append(f"{out.name}:{n}: not a result of a current request")
                    count += 1
                    continue
                got.append(line["custom_id"])
            want = [r["custom_id"] for r in rows]
            missing = [c for c in want if c not in set(got)]
            count += len(missing)
            if missing:
                lost.append(f"{out.name}: {len(missing)} of {len(want)} missing: {missing[:8]}")
            twice = [c for c, k in Counter(got).items() if k > 1]
            if twice:
                lost.append(f"{out.name}: results written twice: {twice[:8]}")
            if not missing and not twice and got != want:
                lost.append(f"{out.name}: results not in input order")
                count += 1
        return count, lost


def run_seed(seed: int, steps: int, workdir: Path | None = None, echo: bool = False) -> ChaosResult:
    """One seed against a fresh simulator in a temp directory (under workdir if given)."""
    config = SimConfig.fast(
        seed=seed, start_time=time.time() - SKEW_DAYS * DAY, completion_window_seconds=WINDOW
    )
    sim = Simulator(config)
    with sim, tempfile.TemporaryDirectory(dir=workdir) as tmp:
        # Killed builds reset their connections; the server's default handler prints each.
        sim._httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
        return Chaos(Path(tmp), sim, seed, steps, echo).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=6, help="how many seeds (default 6)")
    parser.add_argument("--steps", type=int, default=50, help="steps per seed (default 50)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("-v", "--verbose", action="store_true", help="print every step")
    args = parser.parse_args()
    failed = 0
    totals: Counter[str] = Counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        result = run_seed(seed, args.steps, echo=args.verbose)
        print(result.report() if args.verbose or not result.ok else result.summary(), flush=True)
        failed += not result.ok
        totals.update(
            steps=result.n_steps,
            billed=result.billed,
            allowed=result.allowed,
            duplicates=sum(result.duplicates.values()),
            lost=result.lost,
        )
    print(
        f"total: {args.seeds} seeds, {totals['steps']} steps, billed {totals['billed']}, "
        f"allowed re-bills {totals['allowed']}, duplicates {totals['duplicates']}, "
        f"lost {totals['lost']}, seeds failed {failed}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
