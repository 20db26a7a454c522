"""A forced build (-B) killed between its intent to create a batch and the create: the next
plain build finds no batch at the API and must not send the shard either (its requests still
have their old results, which a plain build keeps). Found by bench/chaos.py seed 24."""

from __future__ import annotations

from buildkit import billed_ids, chat, creates, make_project

from gptbatch.errors import EXIT_OK


def test_a_forced_shard_killed_before_create_is_not_sent_by_the_next_plain_build(
    tmp_path, simulator
) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(6)]})
    assert project.build() == EXIT_OK
    before = project.output()
    assert sorted(billed_ids(simulator)) == sorted(f"r{i}" for i in range(6))
    killed = project.build_process("-B", env={"GPTBATCH_CRASH_AT": "before_create"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    created = creates(simulator)
    assert project.build() == EXIT_OK
    assert creates(simulator) == created  # nothing sent: every request is up to date
    assert len(billed_ids(simulator)) == 6
    assert project.output() == before


def test_a_forced_batch_created_before_a_kill_is_adopted_and_replaces_results(
    tmp_path, simulator
) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat(f"r{i}") for i in range(6)]})
    assert project.build() == EXIT_OK
    killed = project.build_process("-B", env={"GPTBATCH_CRASH_AT": "after_create"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    created = creates(simulator)
    assert project.build() == EXIT_OK
    assert creates(simulator) == created  # the forced batch is adopted, not sent again
    assert len(billed_ids(simulator)) == 12  # the first build and the forced batch, once each
    assert len(project.output()) == 6
