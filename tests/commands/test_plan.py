"""Tests for gptbatch.commands.plan and `gptbatch plan`: totals, shards, costs, caveats, JSON."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import gptbatch
from gptbatch.cli import main
from gptbatch.commands.plan import caveat_key, make_plan, make_plans, output_limit
from gptbatch.config.spec import load_spec
from gptbatch.errors import InputError
from gptbatch.inputs.tokens import estimate_request

PRICES = json.loads((Path(gptbatch.__file__).parent / "data" / "prices.json").read_text())


def _expected_groups(spec_path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (model, url): requests, tokens, output bound, computed without gptbatch.commands.plan."""
    spec = load_spec(spec_path)
    groups: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "tokens": 0, "output": 0}
    )
    for path in spec.inputs:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            req = json.loads(line)
            body = req["body"]
            g = groups[(body["model"], req["url"])]
            g["requests"] += 1
            g["tokens"] += estimate_request(req["url"], body).tokens
            if req["url"] != "/v1/embeddings":
                g["output"] += body["max_tokens"] * body.get("n", 1)
    return dict(groups)


def test_plan_totals_match_an_independent_count_of_the_example(example_config: Path) -> None:
    expected = _expected_groups(example_config)
    plan = make_plan(load_spec(example_config))
    got = {(g.model, g.endpoint): g for g in plan.groups}
    assert set(got) == set(expected)
    total_cost = 0.0
    for key, want in expected.items():
        group = got[key]
        assert group.requests == want["requests"]
        assert group.tokens == want["tokens"]
        price = PRICES["models"][key[0]]
        cost = want["tokens"] * price["input"] / 1e6
        assert group.input_cost == pytest.approx(cost)
        assert group.output_tokens_max == want["output"]
        assert group.output_cost_max == pytest.approx(want["output"] * price["output"] / 1e6)
        # A small example fits one batch per group under the tier limits it declares.
        assert group.shards == 1
        total_cost += cost
    assert plan.requests == sum(w["requests"] for w in expected.values())
    assert plan.tokens == sum(w["tokens"] for w in expected.values())
    assert plan.input_cost == pytest.approx(total_cost)
    assert plan.prices_as_of == PRICES["as_of"]


def test_plan_json_output(example_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(example_config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"config", "prices", "groups", "totals", "workload"}
    assert data["workload"] == data["totals"]  # no build state: all of it is left
    assert data["prices"]["as_of"] == PRICES["as_of"]
    assert set(data["totals"]) == {"requests", "tokens", "shards", "input_cost", "output_cost_max"}
    group = data["groups"][0]
    for key in ("model", "endpoint", "requests", "tokens", "shards", "token_cap", "price"):
        assert key in group
    assert data["totals"]["requests"] == sum(g["requests"] for g in data["groups"])
    assert data["totals"]["tokens"] == sum(g["tokens"] for g in data["groups"])


def test_plan_table_lists_groups_and_total(
    example_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(example_config)]) == 0
    out = capsys.readouterr().out
    plan = make_plan(load_spec(example_config))
    assert f"as of {PRICES['as_of']}" in out
    for group in plan.groups:
        assert group.model is not None and group.model in out
    total = [line for line in out.splitlines() if line.startswith("total")]
    assert len(total) == 1 and f"{plan.requests:,}" in total[0] and f"~{plan.tokens:,}" in total[0]


def _chat(custom_id: str, text: str, **extra: Any) -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def _config(tmp_path: Path, lines: list[str], extra: str = "") -> Path:
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    config = tmp_path / "batch.yaml"
    config.write_text("inputs: [in.jsonl]\noutput_dir: out\n" + textwrap.dedent(extra))
    return config


def test_shards_follow_the_token_budget(tmp_path: Path) -> None:
    text = "lorem ipsum dolor sit amet " * 40
    lines = [_chat(f"r{i}", text, max_tokens=10) for i in range(60)]
    limit = 3000
    config = _config(
        tmp_path, lines, f"limits:\n  enqueued_tokens: {limit}\n  safety_margin: 0.1\n"
    )
    plan = make_plan(load_spec(config))
    (group,) = plan.groups
    per_request = estimate_request("/v1/chat/completions", json.loads(lines[0])["body"]).tokens
    cap = int(limit * 0.9) // 4  # a k-th of the working budget: limits.pipeline defaults to 4
    assert group.token_cap == cap
    # Whole requests per shard, and never more than the budget allows.
    assert group.shards >= math.ceil(60 / (cap // per_request))
    assert group.shards <= math.ceil(1.1 * 60 * per_request / cap) + 1


def test_unknown_model_and_config_prices(tmp_path: Path) -> None:
    lines = [_chat("a", "hello", max_tokens=5)]
    lines.append(
        json.dumps(
            {
                "custom_id": "b",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "my-finetune", "messages": [{"role": "user", "content": "x"}]},
            }
        )
    )
    # Two models in one file are two batch groups; the file's url is the same.
    config = _config(tmp_path, lines, "prices:\n  gpt-4o-mini: {input: 2.0, output: 4.0}\n")
    plan = make_plan(load_spec(config))
    by_model = {g.model: g for g in plan.groups}
    mini = by_model["gpt-4o-mini"]
    assert mini.price is not None and mini.price.source == "config"
    assert mini.input_cost == pytest.approx(mini.tokens * 2.0 / 1e6)
    assert mini.output_cost_max == pytest.approx(5 * 4.0 / 1e6)
    unknown = by_model["my-finetune"]
    assert unknown.price is None and unknown.input_cost is None
    assert unknown.output_cost_max is None and unknown.unbounded_requests == 1
    assert plan.input_cost is None  # a total with an unknown part is unknown


def test_output_cost_is_unknown_without_max_tokens(tmp_path: Path) -> None:
    lines = [_chat("a", "hi", max_tokens=7), _chat("b", "hi")]
    plan = make_plan(load_spec(_config(tmp_path, lines)))
    (group,) = plan.groups
    assert group.output_tokens_max is None and group.output_cost_max is None
    assert group.unbounded_requests == 1
    assert group.input_cost is not None


def test_caveats_are_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def image(custom_id: str, url: str) -> str:
        part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [part]}]}
        return json.dumps(
            {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
        )

    lines = [image(f"i{n}", f"https://example.com/{n}.png") for n in range(3)]
    config = _config(tmp_path, lines)
    plan = make_plan(load_spec(config))
    (group,) = plan.groups
    images = [c for c in group.caveats if c.text.startswith("image of unknown size")]
    assert len(images) == 1 and images[0].count == 3
    assert main(["plan", str(config)]) == 0
    assert f"3 × {images[0].text}" in capsys.readouterr().out


def test_caveat_key_drops_the_url() -> None:
    a = caveat_key("image of unknown size at https://a/x.png: counted as the maximum 1536")
    b = caveat_key("image of unknown size at https://b/y.png: counted as the maximum 1536")
    assert a == b and "https" not in a
    assert caveat_key("audio input is not counted") == "audio input is not counted"


def test_a_request_over_the_budget_is_an_error_with_its_line(tmp_path: Path) -> None:
    lines = [_chat("small", "hi"), _chat("big", "word " * 3000)]
    config = _config(tmp_path, lines, "limits:\n  enqueued_tokens: 1000\n")
    with pytest.raises(InputError) as info:
        make_plan(load_spec(config))
    message = str(info.value)
    assert "in.jsonl:2:" in message and "'big'" in message
    assert main(["plan", str(config)]) == 2


@pytest.mark.parametrize(
    ("url", "body", "expected"),
    [
        ("/v1/chat/completions", {"max_tokens": 10}, 10),
        ("/v1/chat/completions", {"max_completion_tokens": 10, "n": 3}, 30),
        ("/v1/responses", {"max_output_tokens": 50}, 50),
        ("/v1/completions", {"max_tokens": 4, "n": 2, "best_of": 5}, 20),
        ("/v1/chat/completions", {}, None),
        ("/v1/chat/completions", {"max_tokens": True}, None),
        ("/v1/embeddings", {"input": "x"}, 0),
        ("/v1/moderations", {"input": "x"}, 0),
    ],
)
def test_output_limit(url: str, body: dict[str, Any], expected: int | None) -> None:
    assert output_limit(url, body) == expected


EXAMPLE_TESTS = (
    "test_plan_totals_match_an_independent_count_of_the_example",
    "test_plan_json_output",
    "test_plan_table_lists_groups_and_total",
)


def test_example_tests_pass_beside_a_built_example(tmp_path: Path, simulator: Any) -> None:
    """The suite reads copies: a real build of examples/ must not change what these tests see.

    Runs this file's example tests in a copy of the repo whose examples/ has been built.
    """
    repo = Path(__file__).resolve().parents[2]
    copy = tmp_path / "repo"
    shutil.copytree(repo / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo / "examples", copy / "examples", ignore=shutil.ignore_patterns("out*"))
    env = {**os.environ, "PYTHONPATH": str(repo), "GPTBATCH_CACHE_DIR": str(tmp_path / "cache")}
    build = subprocess.run(  # a real build, against the simulator: state in examples/out
        [sys.executable, "-m", "gptbatch", "build", "examples/batch.yaml"],
        cwd=copy, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert (copy / "examples" / "out" / ".gptbatch").is_dir()
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *(f"tests/commands/test_plan.py::{name}" for name in EXAMPLE_TESTS)],
        cwd=copy, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert inner.returncode == 0, inner.stdout[-3000:]
    assert f"{len(EXAMPLE_TESTS)} passed" in inner.stdout


def test_the_readme_plan_example_is_a_real_run(
    tmp_path: Path, example_config: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """README's `plan` example is what plan prints for a fresh copy of examples/."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    command = "$ gptbatch plan examples/batch.yaml\n"
    start = readme.index("```console\n" + command) + len("```console\n" + command)
    shown = readme[start : readme.index("```", start)]
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "examples/batch.yaml"]) == 0
    assert capsys.readouterr().out == shown


def test_one_read_plans_what_is_left_and_the_whole_as_two_reads_did(tmp_path: Path) -> None:
    """make_plans asks which keys are settled a few hundred at a time: both plans are those
    of a read skipping settled keys one by one and of a read of everything."""
    chat = [
        _chat(f"r{i}", "text " * (i % 17), **({"max_tokens": i % 50} if i % 5 else {}))
        for i in range(900)
    ]
    embeddings = [
        json.dumps(
            {
                "custom_id": f"e{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": "x " * (1 + i % 9)},
            }
        )
        for i in range(400)
    ]
    (tmp_path / "emb.jsonl").write_text("\n".join(embeddings) + "\n")
    config = _config(tmp_path, chat, "limits:\n  enqueued_tokens: 20000\n")
    config.write_text(config.read_text().replace("[in.jsonl]", "[in.jsonl, emb.jsonl]"))
    spec = load_spec(config)
    keys = [r.key for r in make_plans_keys(spec)]
    chosen = set(keys[::3]) | set(keys[700:760])
    asked: list[int] = []

    def settled(batch: list[str]) -> set[str]:
        asked.append(len(batch))
        return chosen.intersection(batch)

    now, whole = make_plans(spec, settled)
    assert now == make_plan(spec, skip=chosen.__contains__)
    assert whole == make_plan(spec)
    assert now.requests == 1_300 - len(chosen) and whole.requests == 1_300
    assert max(asked) <= 500 and sum(asked) == 1_300


def make_plans_keys(spec: Any) -> list[Any]:
    """Every request of spec, as a plan reads them."""
    from gptbatch.inputs.scan import Scanner, ScanOptions

    return list(
        Scanner(spec.inputs, ScanOptions(model=spec.model, endpoint=spec.endpoint)).requests()
    )


def test_settled_keys_agrees_with_is_settled(tmp_path: Path) -> None:
    """A final result (ok, failed) or a shard at the API settles a key; a retry or a shard
    not yet sent does not."""
    from gptbatch.state.store import Store

    store = Store(tmp_path)
    try:
        with store.transaction():
            for key, state in (("ok", "ok"), ("failed", "failed"), ("retry", "retry")):
                store.record_result(key, state=state, line="x" if state == "ok" else None)
            for shard, state in (("s1", "submitted"), ("s2", "ready"), ("s3", "done")):
                store.add_shard(
                    shard,
                    model="m",
                    url="/v1/embeddings",
                    members=[(f"in-{shard}", "c")],
                    tokens=1,
                    nbytes=1,
                    cost=None,
                )
                store.update_shard(shard, state=state)
        keys = ["ok", "failed", "retry", "in-s1", "in-s2", "in-s3", "nothing"]
        assert store.settled_keys(keys) == {k for k in keys if store.is_settled(k)}
        assert store.settled_keys(keys) == {"ok", "failed", "in-s1"}
    finally:
        store.close()
