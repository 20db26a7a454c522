"""Early release (engine/eta.py, scheduler.py, budget.py): when a finalizing batch's room is
refilled before it completes, and what a refusal of such a batch does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from batchinfo import batch_info

from gptbatch.api.remote import BatchInfo
from gptbatch.config.spec import load_spec
from gptbatch.engine.batches import Refusal
from gptbatch.engine.budget import Budget, take_refusal
from gptbatch.engine.census import Census
from gptbatch.engine.eta import Forecast
from gptbatch.engine.scheduler import Scheduler
from gptbatch.engine.summary import BuildSummary
from gptbatch.report import NullReporter
from gptbatch.state.store import Store

MODEL = "gpt-4o-mini"


def info(
    batch: str,
    status: str,
    *,
    created: int = 100,
    started: int | None = None,
    finalizing: int | None = None,
    finished: int | None = None,
) -> BatchInfo:
    return batch_info(
        batch,
        status,
        created_at=created,
        total=10,
        completed=10 if status in ("finalizing", "completed") else 0,
        finished_at=finished,
        in_progress_at=started,
        finalizing_at=finalizing,
    )


def run(forecast: Forecast, batch: str, validate: int, finalize: int, at: int = 100) -> None:
    """Show the forecast one batch's whole life: created at `at`, 30 s in progress."""
    started = at + validate
    forecast.observe(info(batch, "in_progress", created=at, started=started), 0.0)
    fin = started + 30
    forecast.observe(info(batch, "finalizing", created=at, started=started, finalizing=fin), 1.0)
    assert forecast.began_finalizing[batch] == fin
    done = info(batch, "completed", created=at, started=started, finalizing=fin)
    done = BatchInfo(**{**done.__dict__, "finished_at": fin + finalize})
    forecast.observe(done, 2.0)
    assert batch not in forecast.began_finalizing


def test_early_release_needs_validation_no_faster_than_the_slowest_finalizing() -> None:
    forecast = Forecast()
    assert not forecast.early_release()  # nothing seen yet
    run(forecast, "a", validate=5, finalize=5)
    assert not forecast.early_release()  # one sample of each is not enough
    run(forecast, "b", validate=6, finalize=4)
    assert forecast.validated == {"a": 5, "b": 6} and forecast.finalized == {"a": 5, "b": 4}
    assert forecast.early_release()
    run(forecast, "c", validate=7, finalize=6)  # one finalizing slower than a validation
    assert not forecast.early_release()


def test_a_batch_seen_again_is_timed_once() -> None:
    forecast = Forecast()
    run(forecast, "a", validate=5, finalize=5)
    run(forecast, "a", validate=9, finalize=1)  # its download failed: polled again
    assert forecast.validated == {"a": 5} and forecast.finalized == {"a": 5}


def test_watch_start_wakes_for_the_predicted_start_of_finalizing() -> None:
    forecast = Forecast(finalize_seconds=[10.0])
    seen = info("a", "in_progress", started=100)
    forecast.observe(BatchInfo(**{**seen.__dict__, "completed": 0}), 100.0)
    forecast.observe(BatchInfo(**{**seen.__dict__, "completed": 5}), 110.0)  # 2 s a request
    assert forecast.seen["a"].start == pytest.approx((118.0, 122.0))
    assert forecast.next_poll(110.0) == pytest.approx(128.0)  # the finish, finalizing added
    forecast.watch_start = True
    assert forecast.next_poll(110.0) == pytest.approx(118.0)  # the start of finalizing
    forecast.observe(BatchInfo(**{**seen.__dict__, "status": "finalizing", "completed": 10}), 120)
    assert forecast.seen["a"].start is None


# --- the scheduler's side, on a real store ------------------------------------------------


@pytest.fixture
def queue(tmp_path: Path):
    (tmp_path / "in.jsonl").write_text("")
    (tmp_path / "batch.yaml").write_text(
        yaml.safe_dump(
            {
                "inputs": ["in.jsonl"],
                "output_dir": "out",
                "limits": {"enqueued_tokens": 1_000, "safety_margin": 0, "pipeline": 4},
            }
        )
    )
    spec = load_spec(tmp_path / "batch.yaml")
    store = Store(tmp_path / "state")
    scheduler = Scheduler(spec, store, NullReporter(), Budget(spec, store), BuildSummary())
    yield store, scheduler
    store.close()


def fly(store: Store, name: str, status: str, created: int, tokens: int = 250) -> None:
    """A shard of ours at the API, its batch in `status`."""
    with store.transaction():
        store.add_shard(
            name, model=MODEL, url="/v1/chat/completions", members=[], tokens=tokens, nbytes=1,
            cost=None, state="submitted",
        )  # fmt: skip
        store.update_shard(name, batch_id=f"batch_{name}")
        store.upsert_batch(
            f"batch_{name}", shard=name, status=status, input_file_id="f", output_file_id=None,
            error_file_id=None, created_at=created,
        )  # fmt: skip


def test_a_finalizing_batch_is_released_only_when_allowed(queue) -> None:
    store, scheduler = queue
    fly(store, "a", "in_progress", 10)
    fly(store, "b", "finalizing", 20)
    assert scheduler.in_flight(MODEL) == (500, 0)
    scheduler.release_finalizing(False, {"batch_b": 90})
    assert scheduler.released == {}
    scheduler.release_finalizing(True, {"batch_b": 90})
    assert scheduler.released == {MODEL: "batch_b"}
    assert scheduler.in_flight(MODEL)[0] == 250  # its room may be refilled now
    fly(store, "c", "finalizing", 30, tokens=300)
    scheduler.release_finalizing(True, {"batch_b": 90, "batch_c": 95})
    assert scheduler.released == {MODEL: "batch_b"}  # one at a time
    with store.transaction():
        store.upsert_batch(
            "batch_b", shard="b", status="completed", input_file_id="f", output_file_id=None,
            error_file_id=None, created_at=20,
        )  # fmt: skip
    scheduler.release_finalizing(True, {"batch_c": 95})
    assert scheduler.released == {MODEL: "batch_c"}  # b seen ended: c's turn


def test_a_batch_validating_since_before_it_began_holds_the_release_back(queue) -> None:
    """Where validating batches count, one created before the finalizing began could be
    admitted during the overlap: no release until it is; one created after is no risk."""
    store, scheduler = queue
    fly(store, "a", "finalizing", 10)
    fly(store, "v", "validating", 90)
    scheduler.release_finalizing(True, {"batch_a": 90})  # same second: maybe before
    assert scheduler.released == {}
    with store.transaction():
        store.db.execute("UPDATE batches SET created_at=91 WHERE id='batch_v'")
    scheduler.release_finalizing(True, {"batch_a": 90})
    assert scheduler.released == {MODEL: "batch_a"}


def test_no_release_while_a_create_is_unresolved_or_others_share_the_queue(queue) -> None:
    store, scheduler = queue
    fly(store, "a", "finalizing", 10)
    with store.transaction():
        store.add_shard(
            "s", model=MODEL, url="/v1/chat/completions", members=[], tokens=100, nbytes=1,
            cost=None, state="submitting",
        )  # fmt: skip
    scheduler.release_finalizing(True, {"batch_a": 90})
    assert scheduler.released == {}
    with store.transaction():
        store.update_shard("s", state="dropped")
    scheduler.census = Census({"test"})
    scheduler.census.view.tokens[MODEL] = 100  # another project's batch in flight
    scheduler.release_finalizing(True, {"batch_a": 90})
    assert scheduler.released == {}
    scheduler.census.view.tokens.clear()
    scheduler.release_finalizing(True, {"batch_a": 90})
    assert scheduler.released == {MODEL: "batch_a"}


def test_a_refusal_of_an_early_batch_ends_early_release_and_teaches_nothing(queue) -> None:
    store, scheduler = queue
    fly(store, "a", "finalizing", 10)
    scheduler.release_finalizing(True, {"batch_a": 90})
    fly(store, "e", "validating", 95)
    scheduler.sent_early(MODEL, "batch_e")
    assert not scheduler.refused_early("batch_other", MODEL)
    budget = scheduler.budget
    before = budget.working(MODEL)
    shard = store.shard("e")
    refusal = Refusal(shard, "tokens", 1_000, "Enqueued token limit reached", "x", "batch_e", 0.0)
    assert scheduler.refused_early("batch_e", MODEL)
    assert scheduler.early_off and scheduler.released == {}
    take_refusal(budget, refusal, NullReporter(), learn=False)
    assert budget.working(MODEL) == before  # the limit stands
    assert budget.learned(MODEL) is None
    waiting = store.shard("e")
    assert waiting.state == "waiting" and waiting.refusals == 1 and waiting.batch_id is None
    scheduler.release_finalizing(True, {"batch_a": 90})
    assert scheduler.released == {}  # not again in this run


def test_a_429_at_create_while_released_counts_as_early(queue) -> None:
    store, scheduler = queue
    fly(store, "a", "finalizing", 10)
    assert not scheduler.refused_early("batches.create", MODEL)  # nothing released
    scheduler.release_finalizing(True, {"batch_a": 90})
    assert scheduler.refused_early("batches.create", MODEL)


def test_a_plain_refusal_still_lowers_the_budget(queue) -> None:
    store, scheduler = queue
    fly(store, "a", "validating", 10)
    budget = scheduler.budget
    refusal = Refusal(store.shard("a"), "tokens", 800, "Enqueued token limit", "x", "batch_a", 0.0)
    take_refusal(budget, refusal, NullReporter())
    assert budget.working(MODEL) < 1_000
