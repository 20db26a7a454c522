"""Tests for gptbatch.config.spec and the batch.yaml schema: defaults, located errors."""

from __future__ import annotations

import json
import os
import re
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gptbatch.config.rehearsal import SIMULATED_SUFFIX
from gptbatch.config.spec import (
    SCHEMA_PATH,
    Limits,
    api_key,
    load_schema,
    load_spec,
)
from gptbatch.errors import ConfigError
from gptbatch.inputs.requests import ENDPOINTS, read_requests

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restore_environment() -> Iterator[None]:
    """load_spec loads .env files into os.environ; undo that after each test."""
    saved = dict(os.environ)
    yield
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    os.environ.update(saved)


def write(directory: Path, text: str, name: str = "batch.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def touch(directory: Path, *names: str) -> None:
    for name in names:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")


def config_problems(path: Path | str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    return [str(p) for p in info.value.problems]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    touch(tmp_path, "in.jsonl")
    return tmp_path


# --- the schema file -----------------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_repo_schema_is_a_relative_symlink_to_the_package_copy() -> None:
    link = REPO / "schema" / "batch.schema.json"
    assert link.is_symlink()
    assert not os.path.isabs(os.readlink(link))
    assert os.path.samefile(link, SCHEMA_PATH)
    assert SCHEMA_PATH == REPO / "gptbatch" / "schema" / "batch.schema.json"


def _objects(schema: dict[str, Any], where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every object schema with named properties, with its key path."""
    found = []
    if "properties" in schema:
        found.append((where, schema))
        for name, sub in schema["properties"].items():
            found += _objects(sub, f"{where}.{name}".lstrip("."))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        found += _objects(extra, f"{where}.*")
    return found


def test_every_key_is_described_and_closed() -> None:
    for where, schema in _objects(load_schema()):
        assert schema.get("additionalProperties") is False, where
        for name, sub in schema["properties"].items():
            assert sub.get("description"), f"{where}.{name}"
            optional = name not in schema.get("required", [])
            if where in ("", "limits", "polling", "api") and optional:
                assert "default" in sub, f"{where}.{name} documents no default"


def test_schema_endpoints_match_the_reader() -> None:
    enum = load_schema()["properties"]["endpoint"]["enum"]
    assert [e for e in enum if e is not None] == list(ENDPOINTS)


# --- the example ---------------------------------------------------------------------------------


def test_example_config_loads(example_config: Path) -> None:
    EXAMPLE = example_config
    spec = load_spec(EXAMPLE)
    assert spec.path == EXAMPLE and spec.root == EXAMPLE.parent
    assert spec.inputs == (
        EXAMPLE.parent / "inputs" / "reviews.jsonl",
        EXAMPLE.parent / "inputs" / "embeddings.jsonl",
    )
    assert spec.output_dir == EXAMPLE.parent / "out"
    assert spec.limits.token_limit("gpt-4o-mini") == 2_000_000
    assert spec.limits.token_limit("text-embedding-3-small") == 3_000_000
    assert spec.limits.token_limit("gpt-4o") is None
    assert spec.model is None and spec.endpoint is None


def test_every_example_input_line_validates(example_config: Path) -> None:
    spec = load_spec(example_config)
    found = list(read_requests(spec.inputs, model=spec.model, endpoint=spec.endpoint))
    lines = [
        json.loads(line)
        for path in spec.inputs
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    assert [r.custom_id for r in found] == [line["custom_id"] for line in lines]
    assert Counter((r.model, r.url) for r in found) == {
        ("gpt-4o-mini", "/v1/chat/completions"): 12,
        ("text-embedding-3-small", "/v1/embeddings"): 8,
    }
    messages = [m for r in found if "messages" in r.body for m in r.body["messages"]]
    assert any("name" in m and isinstance(m["content"], list) for m in messages)


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones(work: Path) -> None:
    spec = load_spec(write(work, "inputs: [in.jsonl]\n"))
    schema = load_schema()["properties"]
    limits, polling, api = (schema[k]["properties"] for k in ("limits", "polling", "api"))
    assert spec.output_dir == work / "out"
    assert spec.limits == Limits(
        enqueued_tokens=limits["enqueued_tokens"]["default"],
        safety_margin=limits["safety_margin"]["default"],
        max_requests_per_batch=limits["max_requests_per_batch"]["default"],
        max_bytes_per_batch=limits["max_bytes_per_batch"]["default"],
        enqueued_requests=limits["enqueued_requests"]["default"],
        max_cost=limits["max_cost"]["default"],
    )
    # The documented values, written out: the schema must say what the code does.
    assert (spec.limits.safety_margin, spec.limits.max_requests_per_batch) == (0.1, 50_000)
    assert spec.limits.max_bytes_per_batch == 200_000_000
    assert spec.limits.enqueued_tokens is None and spec.limits.max_cost is None
    assert (
        (spec.polling.initial_seconds, spec.polling.max_seconds, spec.polling.factor)
        == (
            polling["initial_seconds"]["default"],
            polling["max_seconds"]["default"],
            polling["factor"]["default"],
        )
        == (10, 300, 1.5)
    )
    assert spec.api.api_key_env == api["api_key_env"]["default"] == "OPENAI_API_KEY"
    assert spec.api.base_url is None and spec.api.organization is None
    assert spec.retries == schema["retries"]["default"] == 3
    assert spec.completion_window == "24h"
    assert spec.metadata == {} and spec.prices == {}
    assert spec.model is None and spec.endpoint is None


def test_default_project_survives_a_renamed_config_and_a_moved_checkout(work: Path) -> None:
    text = "inputs: [in.jsonl]\noutput_dir: results\n"
    spec = load_spec(write(work, text, "my jobs.yaml"))
    assert spec.project.startswith("results-") and len(spec.project) == len("results-") + 8
    # Renamed config: same id.
    assert load_spec(write(work, text, "ci.yaml")).project == spec.project
    # The same config in another directory (a moved checkout, another CI runner): same id.
    moved = work / "elsewhere" / "checkout"
    moved.mkdir(parents=True)
    (moved / "in.jsonl").write_text((work / "in.jsonl").read_text())
    assert load_spec(write(moved, text, "batch.yaml")).project == spec.project
    # Another output_dir or other inputs make another project.
    other = load_spec(write(work, "inputs: [in.jsonl]\noutput_dir: elsewhere\n", "my jobs.yaml"))
    assert other.project != spec.project
    assert (
        load_spec(write(work, "inputs: [in.jsonl, '*.jsonl']\noutput_dir: results\n")).project
        != spec.project
    )


def test_explicit_values_are_used(work: Path) -> None:
    spec = load_spec(
        write(
            work,
            """
            inputs: [in.jsonl]
            output_dir: /tmp/gptbatch-results
            project: reviews-2024
            model: gpt-4o-mini
            endpoint: /v1/chat/completions
            limits:
              enqueued_tokens: 90000
              enqueued_requests: {gpt-4o-mini: 10, "*": 20}
              safety_margin: 0
              max_cost: 12.5
            metadata: {team: data}
            retries: 0
            polling: {initial_seconds: 1, max_seconds: 1, factor: 1}
            api: {base_url: "http://127.0.0.1:8080/v1", api_key_env: MY_KEY, organization: org-1}
            prices: {gpt-4o-mini: {input: 0.075, output: 0.3}}
            """,
        )
    )
    assert spec.output_dir == Path("/tmp/gptbatch-results")
    assert (spec.project, spec.model, spec.endpoint) == (
        "reviews-2024",
        "gpt-4o-mini",
        "/v1/chat/completions",
    )
    assert spec.limits.token_limit("anything") == 90_000
    assert spec.limits.token_budget("anything") == 90_000
    assert spec.limits.request_limit("gpt-4o-mini") == 10
    assert spec.limits.request_limit("gpt-4o") == 20
    assert spec.limits.max_cost == 12.5
    assert spec.metadata == {"team": "data"} and spec.retries == 0
    assert spec.api.base_url == "http://127.0.0.1:8080/v1" and spec.api.api_key_env == "MY_KEY"
    assert spec.prices == {"gpt-4o-mini": {"input": 0.075, "output": 0.3}}


def test_limits_per_model_maps() -> None:
    limits = Limits({"gpt-4o": 100, "*": 7}, 0.2, 10, 10, None, None)
    assert limits.token_limit("gpt-4o") == 100 and limits.token_limit("o3") == 7
    assert limits.token_budget("gpt-4o") == 80
    assert limits.request_limit("gpt-4o") is None
    no_default = Limits({"gpt-4o": 100}, 0.1, 10, 10, {"gpt-4o": 3}, None)
    assert no_default.token_limit("o3") is None and no_default.token_budget("o3") is None
    assert no_default.request_limit("gpt-4o") == 3


# --- errors: key path, YAML line, what is allowed ------------------------------------------------


SCHEMA_ERRORS = [
    (
        "maximum",
        """
        # comment
        inputs:
          - in.jsonl
        output_dir: out

        limits:
          safety_margin: 1.5
        """,
        "batch.yaml:7: limits.safety_margin: 1.5 is greater than the maximum of 0.9: "
        "a fraction of the token limit kept free, between 0 and 0.9",
    ),
    (
        "unknown key with a suggestion",
        "inputs: [in.jsonl]\nlimits:\n  safety_margn: 0.2\n",
        "batch.yaml:3: limits: unknown key 'safety_margn' (did you mean 'safety_margin'?): "
        "allowed keys under limits: enqueued_tokens, safety_margin, max_requests_per_batch",
    ),
    (
        "unknown top-level key",
        "inputs: [in.jsonl]\n\nmodels: gpt-4o\n",
        "batch.yaml:3: unknown key 'models' (did you mean 'model'?): allowed keys at the top "
        "level: version, inputs, output_dir",
    ),
    (
        "missing inputs",
        "output_dir: out\n",
        "batch.yaml:1: missing required key 'inputs': a list of JSONL request files",
    ),
    (
        "wrong type",
        "inputs: [in.jsonl]\nlimits:\n  enqueued_tokens: lots\n",
        "batch.yaml:3: limits.enqueued_tokens: 'lots' is a string, expected an integer or a "
        "mapping: your tier's batch queue limit",
    ),
    (
        "per-model map value",
        'inputs: [in.jsonl]\nlimits:\n  enqueued_tokens:\n    gpt-4o: 5\n    "gpt-4.1": 0\n',
        'batch.yaml:5: limits.enqueued_tokens["gpt-4.1"]: 0 is less than the minimum of 1: '
        "the enqueued-token limit for this model, a positive integer",
    ),
    (
        "enum",
        "inputs: [in.jsonl]\nendpoint: /v1/images\n",
        "batch.yaml:2: endpoint: '/v1/images' is not allowed: the endpoint for every request",
    ),
    (
        "list item",
        "inputs:\n  - in.jsonl\n  - 5\n",
        "batch.yaml:3: inputs[1]: 5 is an integer, expected a string",
    ),
    (
        "too many metadata pairs",
        "inputs: [in.jsonl]\nmetadata:\n" + "".join(f"  k{i}: v\n" for i in range(13)),
        "batch.yaml:3: metadata: has 13 entries; at most 12 allowed: your own tags",
    ),
    (
        "metadata value too long",
        "inputs: [in.jsonl]\nmetadata:\n  note: " + "x" * 513 + "\n",
        "batch.yaml:3: metadata.note: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... "
        "is too long (513 characters, at most 512): a metadata value",
    ),
    (
        "metadata key too long",
        "inputs: [in.jsonl]\nmetadata:\n  a: b\n  " + "k" * 65 + ": v\n",
        "batch.yaml:4: metadata: key 'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk... "
        "is too long (65 characters, at most 64): a metadata key: 1 to 64 characters",
    ),
    (
        "reserved metadata key",
        "inputs: [in.jsonl]\nmetadata:\n  gptbatch_shard: x\n",
        "batch.yaml:3: metadata: key 'gptbatch_shard' is reserved: keys starting with "
        "gptbatch_ are gptbatch's own",
    ),
    (
        "missing price",
        "inputs: [in.jsonl]\nprices:\n  gpt-4o:\n    output: 5\n",
        "batch.yaml:4: prices.gpt-4o: missing required key 'input': US dollars per 1M prompt "
        "tokens",
    ),
    (
        "polling order",
        "inputs: [in.jsonl]\npolling:\n  initial_seconds: 600\n",
        "batch.yaml:3: polling.initial_seconds (600) is greater than polling.max_seconds (300)",
    ),
    (
        "pattern",
        "inputs: [in.jsonl]\napi:\n  api_key_env: my-key\n",
        "batch.yaml:3: api.api_key_env: 'my-key' does not have the allowed form: the name of "
        "the environment variable",
    ),
    (
        "requests cap",
        "inputs: [in.jsonl]\nlimits: {max_requests_per_batch: 50001}\n",
        "batch.yaml:2: limits.max_requests_per_batch 50001 is over openai's cap of 50,000 "
        "requests per batch: use at most 50000",
    ),
    (
        "not a mapping",
        "- in.jsonl\n",
        "batch.yaml:1: the config must be a mapping of keys to values, not a list",
    ),
    (
        "yaml syntax",
        "inputs:\n  - in.jsonl\nlimits: {safety_margin: 0.1\n",
        "batch.yaml:4: YAML syntax error: expected ',' or '}', but got '<stream end>'",
    ),
    (
        "duplicate key",
        "inputs: [in.jsonl]\nretries: 2\nretries: 3\n",
        "batch.yaml:3: duplicate key 'retries' (first at line 2): YAML keeps only the last one",
    ),
    ("empty file", "", "batch.yaml:1: the config is empty: it needs at least `inputs:`"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in SCHEMA_ERRORS], ids=[c[0] for c in SCHEMA_ERRORS]
)
def test_config_errors_name_key_path_line_and_what_is_allowed(
    work: Path, text: str, expected: str
) -> None:
    write(work, text)
    before = sorted(p.name for p in work.iterdir())
    found = config_problems("batch.yaml")
    assert len(found) == 1, found
    assert found[0].startswith(expected)
    assert sorted(p.name for p in work.iterdir()) == before


def test_all_config_errors_are_reported_together(work: Path) -> None:
    write(
        work,
        """
        inputs: [missing/*.jsonl]
        limits:
          safety_margin: -1
        retries: many
        colour: blue
        """,
    )
    found = config_problems("batch.yaml")
    # Schema errors first, shallow (more fundamental) before deep, then the input globs.
    assert [p.split(":")[1] for p in found] == ["5", "4", "3", "1"]
    assert found[-1].startswith("batch.yaml:1: inputs[0]: 'missing/*.jsonl' matches no files")


def test_missing_config_file_says_what_to_do(work: Path) -> None:
    [problem] = config_problems("nope.yaml")
    assert problem.startswith("nope.yaml: config file not found: check the path")
    assert "gptbatch validate" in problem


def test_missing_default_config_names_the_directory(work: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_spec()
    [problem] = info.value.problems
    assert problem.message == f"no batch.yaml in {work}"
    assert "gptbatch validate path/to/batch.yaml" in problem.hint
    # examples/ is not in an installed package: init is what writes a config to start from.
    assert "examples/batch.yaml" not in problem.hint
    assert "`gptbatch init` writes a commented batch.yaml" in problem.hint


def test_default_config_and_directory_argument(work: Path) -> None:
    write(work, "inputs: [in.jsonl]\n")
    assert load_spec().path == work / "batch.yaml"
    (work / "sub").mkdir()
    write(work / "sub", "inputs: [../in.jsonl]\n")
    assert load_spec("sub").inputs == (work / "in.jsonl",)


# --- inputs: paths and globs relative to the config ----------------------------------------------


def test_globs_expand_sorted_per_pattern_deduplicated_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    touch(project, "data/b.jsonl", "data/a.jsonl", "data/deep/c.jsonl", "extra.jsonl", "data/x.txt")
    touch(project, "out/a.jsonl", "out/.gptbatch/z.jsonl")
    config = write(
        project,
        """
        inputs:
          - extra.jsonl
          - data/*.jsonl
          - data/**/*.jsonl
          - "**/*.jsonl"
        """,
    )
    monkeypatch.chdir(tmp_path)  # relative to the config, not the working directory
    spec = load_spec(config)
    data = project / "data"
    assert spec.inputs == (
        project / "extra.jsonl",
        data / "a.jsonl",
        data / "b.jsonl",
        data / "deep" / "c.jsonl",
    )
    assert all(p.is_absolute() for p in spec.inputs)


def test_glob_matching_nothing_and_missing_paths_are_errors(work: Path) -> None:
    (work / "dir").mkdir()
    write(work, "inputs:\n  - in.jsonl\n  - data/*.jsonl\n  - gone.jsonl\n  - dir\n")
    assert [p.split(": ")[1:3] for p in config_problems("batch.yaml")] == [
        ["inputs[1]", "'data/*.jsonl' matches no files"],
        ["inputs[2]", "no such file 'gone.jsonl'"],
        ["inputs[3]", "'dir' is a directory"],
    ]


def test_glob_only_matching_outputs_is_an_error(work: Path) -> None:
    touch(work, "out/in.jsonl")
    write(work, "inputs: [in.jsonl, 'out/*.jsonl']\n")
    [problem] = config_problems("batch.yaml")
    assert problem.startswith("batch.yaml:1: inputs[1]: 'out/*.jsonl' matches no files")


# --- .env and the API key ------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # setenv then delenv: monkeypatch then removes whatever .env loading adds.
    for name in ("GPTBATCH_TEST_KEY", "GPTBATCH_TEST_OTHER"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    return monkeypatch


def test_env_beside_config_provides_the_key_and_it_is_never_in_the_spec(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-" + "9" * 40
    project = tmp_path / "project"
    touch(project, "in.jsonl")
    config = write(project, "inputs: [in.jsonl]\napi: {api_key_env: GPTBATCH_TEST_KEY}\n")
    (project / ".env").write_text(f"GPTBATCH_TEST_KEY={secret}\n")
    (tmp_path / "cwd").mkdir()
    clean_env.chdir(tmp_path / "cwd")
    spec = load_spec(config)
    assert os.environ["GPTBATCH_TEST_KEY"] == secret
    assert api_key(spec) == secret
    assert secret not in repr(spec) and secret not in str(vars(spec))


def test_env_in_working_directory_is_loaded_and_environment_wins(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    touch(project, "in.jsonl")
    config = write(project, "inputs: [in.jsonl]\napi: {api_key_env: GPTBATCH_TEST_KEY}\n")
    (tmp_path / ".env").write_text("GPTBATCH_TEST_KEY=from-cwd\nGPTBATCH_TEST_OTHER=cwd\n")
    (project / ".env").write_text("GPTBATCH_TEST_OTHER=beside\n")
    clean_env.chdir(tmp_path)
    assert api_key(load_spec(config)) == "from-cwd"
    assert os.environ["GPTBATCH_TEST_OTHER"] == "beside"  # beside the config comes first
    clean_env.setenv("GPTBATCH_TEST_KEY", "from-environment")
    assert api_key(load_spec(config)) == "from-environment"


def test_no_key_anywhere_is_none(work: Path, clean_env: pytest.MonkeyPatch) -> None:
    spec = load_spec(write(work, "inputs: [in.jsonl]\napi: {api_key_env: GPTBATCH_TEST_KEY}\n"))
    assert api_key(spec) is None


# --- hostile or mistaken YAML: refused with a line, never run, never expanded ------------------


def alias_bomb(under: str, levels: int = 9) -> str:
    """A "billion laughs" config: each level lists the previous one nine times."""
    item = "  - " if under == "inputs" else "  l{}: "
    lines = [f"{under}:", item.format(0) + '&l0 ["lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(item.format(level) + f"&l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    lines.append(item.format("x") + f"[{', '.join([f'*l{levels - 1}'] * 9)}]")
    head = "inputs: [in.jsonl]\n" if under != "inputs" else ""
    return head + "\n".join(lines) + "\n"


def bomb_size(levels: int = 9) -> int:
    """Values the last anchor of alias_bomb() stands for: 5, then 1 + 9 times the previous."""
    size = 5
    for _ in range(1, levels):
        size = 1 + 9 * size
    return size


@pytest.mark.timeout(20)
@pytest.mark.parametrize("under", ["metadata", "prices", "limits"])
def test_an_alias_bomb_is_refused_before_anything_walks_it(work: Path, under: str) -> None:
    write(work, alias_bomb(under))
    started = time.perf_counter()
    found = config_problems("batch.yaml")
    assert time.perf_counter() - started < 5
    [problem] = found
    assert re.fullmatch(
        rf"batch\.yaml:12: YAML aliases expand the config to [\d,]+ values \(\*l8 alone to "
        rf"{bomb_size():,}; anchor &l8 at line 11\): aliases may repeat at most 10,000 values; "
        "write the values out instead of nesting aliases",
        problem,
    )


@pytest.mark.timeout(20)
def test_an_alias_bomb_under_inputs_is_refused(work: Path) -> None:
    write(work, alias_bomb("inputs"))
    [problem] = config_problems("batch.yaml")
    assert problem.startswith("batch.yaml:11: YAML aliases expand the config to")
    assert f"(*l8 alone to {bomb_size():,}; anchor &l8 at line 10)" in problem


def test_a_recursive_alias_is_refused(work: Path) -> None:
    write(work, "inputs: [in.jsonl]\nmetadata: &m\n  self: *m\n")
    assert config_problems("batch.yaml") == [
        "batch.yaml:3: YAML alias *m refers to a value that contains it (anchor &m at line 2): "
        "a config cannot be recursive; write the value out instead"
    ]


def test_ordinary_anchors_and_aliases_still_work(work: Path) -> None:
    touch(work, "b.jsonl")
    write(
        work,
        """
        inputs: &files [in.jsonl, b.jsonl]
        limits:
          enqueued_tokens: &tokens {gpt-4o: 100, "*": 50}
          enqueued_requests: *tokens
        metadata: {a: &same "x", b: *same}
        prices:
          base: &price {input: 1.0, output: 2.0}
          copy: {<<: *price, output: 3.0}
        """,
    )
    spec = load_spec("batch.yaml")
    assert spec.inputs == (work / "in.jsonl", work / "b.jsonl")
    assert spec.limits.request_limit("o3") == 50
    assert spec.metadata == {"a": "x", "b": "x"}
    assert spec.prices["copy"] == {"input": 1.0, "output": 3.0}


def test_a_python_tag_is_refused_and_never_run(work: Path) -> None:
    marker = work / "pwned"
    write(work, f"inputs: [in.jsonl]\nx: !!python/object/apply:os.system ['touch {marker}']\n")
    assert config_problems("batch.yaml") == [
        "batch.yaml:2: YAML tag '!!python/object/apply:os.system' is not allowed: batch.yaml "
        "holds plain values (text, numbers, lists, mappings); remove the tag"
    ]
    assert not marker.exists()


def test_nesting_too_deep_for_the_parser_is_a_problem(work: Path) -> None:
    write(work, "inputs: [in.jsonl]\nmetadata: {a: " + "[" * 5000 + "]" * 5000 + "}\n")
    assert config_problems("batch.yaml") == [
        "batch.yaml: nested too deeply: flatten the lists and mappings"
    ]


NON_FINITE = [
    ("limits:\n  safety_margin: .nan", "batch.yaml:3: limits.safety_margin: .nan"),
    ("limits:\n  max_cost: .NaN", "batch.yaml:3: limits.max_cost: .NaN"),
    ("polling: {initial_seconds: .inf}", "batch.yaml:2: polling.initial_seconds: .inf"),
    ("polling:\n  max_seconds: 1.0e+400", "batch.yaml:3: polling.max_seconds: 1.0e+400"),
    ("prices: {gpt-4o: {input: -.Inf}}", "batch.yaml:2: prices.gpt-4o.input: -.Inf"),
    ("limits: {enqueued_tokens: .inf}", "batch.yaml:2: limits.enqueued_tokens: .inf"),
]


@pytest.mark.parametrize(("text", "where"), NON_FINITE, ids=[w for _, w in NON_FINITE])
def test_nan_and_infinity_are_refused_with_key_path_and_line(
    work: Path, text: str, where: str
) -> None:
    write(work, f"inputs: [in.jsonl]\n{text}\n")
    assert config_problems("batch.yaml") == [f"{where} is not a finite number: use a finite number"]


# --- an API key pasted into the config is never printed back -------------------------------------

SECRET = "sk-proj-" + "Ab3" * 16


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"api: {{api_key_env: {SECRET}}}",
            "batch.yaml:2: api.api_key_env: 'sk-...3Ab3' looks like an API key: api_key_env "
            "names an environment variable, not the key itself: put the key in OPENAI_API_KEY "
            "or .env",
        ),
        (  # an Azure-style key fits the variable-name pattern: still refused
            "api:\n  api_key_env: " + "c0ffee" * 5 + "ab",
            "batch.yaml:3: api.api_key_env: 'c0f...eeab' looks like an API key: api_key_env "
            "names an environment variable",
        ),
        (f"{SECRET}: 1", "batch.yaml:2: unknown key 'sk-...3Ab3'"),
        (f"project: {SECRET}x!", "batch.yaml:2: project: 'sk-...Ab3x!' does not have"),
        (f"metadata: {{note: [{SECRET}]}}", 'batch.yaml:2: metadata.note: ["sk-...3Ab3"]'),
    ],
    ids=["api_key_env", "hex key", "as a key", "as project", "as metadata"],
)
def test_a_key_in_the_config_is_masked_in_every_message(
    work: Path, text: str, expected: str
) -> None:
    write(work, f"inputs: [in.jsonl]\n{text}\n")
    found = config_problems("batch.yaml")
    assert len(found) == 1 and found[0].startswith(expected), found
    assert SECRET not in found[0] and SECRET[8:] not in found[0]


def test_a_key_as_an_input_path_is_masked(work: Path) -> None:
    write(work, f"inputs: [in.jsonl, {SECRET}]\n")
    [problem] = config_problems("batch.yaml")
    assert problem.startswith("batch.yaml:1: inputs[1]: no such file 'sk-...3Ab3'")
    assert SECRET[8:] not in problem


# --- inputs: literal names, special files, output and state directories ---------------------------


def test_a_name_with_glob_characters_is_taken_literally_when_it_exists(work: Path) -> None:
    touch(work, "in/a[1].jsonl", "in/a1.jsonl", "in/b[x].jsonl")
    write(work, "inputs: ['in/a[1].jsonl', 'in/b[[]x].jsonl', 'in/a?.jsonl']\n")
    assert load_spec("batch.yaml").inputs == (
        work / "in" / "a[1].jsonl",
        work / "in" / "b[x].jsonl",  # an escaped glob still matches
        work / "in" / "a1.jsonl",
    )


def test_a_dangling_symlink_matched_by_a_glob_is_reported(work: Path) -> None:
    touch(work, "data/a.jsonl")
    (work / "data" / "b.jsonl").symlink_to(work / "data" / "gone.jsonl")
    write(work, "inputs: ['data/*.jsonl']\n")
    assert config_problems("batch.yaml") == [
        "batch.yaml:1: inputs[0]: 'data/*.jsonl' matches data/b.jsonl, which is a symlink to a "
        "missing file: fix or remove the symlink"
    ]


def test_a_dangling_symlink_named_literally_is_reported(work: Path) -> None:
    (work / "b.jsonl").symlink_to(work / "gone.jsonl")
    write(work, "inputs: [b.jsonl]\n")
    assert config_problems("batch.yaml") == [
        "batch.yaml:1: inputs[0]: 'b.jsonl' is a symlink to a missing file: fix or remove the "
        "symlink"
    ]


def test_a_symlink_loop_is_reported(work: Path) -> None:
    (work / "a.jsonl").symlink_to(work / "b.jsonl")
    (work / "b.jsonl").symlink_to(work / "a.jsonl")
    write(work, "inputs: [a.jsonl, 'b*.jsonl']\n")
    assert config_problems("batch.yaml") == [
        "batch.yaml:1: inputs[0]: 'a.jsonl' is a symlink loop: point the symlink at a real file",
        "batch.yaml:1: inputs[1]: 'b*.jsonl' matches b.jsonl, which is a symlink loop: point "
        "the symlink at a real file",
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_not_a_regular_file(work: Path) -> None:
    os.mkfifo(work / "pipe.jsonl")
    write(work, "inputs: [pipe.jsonl, '*.jsonl']\n")
    assert config_problems("batch.yaml") == [
        "batch.yaml:1: inputs[0]: 'pipe.jsonl' is not a regular file (a FIFO): inputs are "
        "JSONL files; write the requests to one",
        "batch.yaml:1: inputs[1]: '*.jsonl' matches pipe.jsonl, which is not a regular file "
        "(a FIFO): inputs are JSONL files; write the requests to one",
    ]


def test_globs_never_match_output_simulated_or_state_directories(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTBATCH_STATE_DIR", str(work / "state"))
    touch(work, "out/a.jsonl", "out-simulated/b.jsonl", "state/c.jsonl")
    touch(work, ".gpt_batch_manager/out/d.jsonl", "data/e.jsonl")
    write(work, "inputs: ['**/*.jsonl', '.gpt_batch_manager/**/*.jsonl']\n")
    found = config_problems("batch.yaml")
    assert found == [
        "batch.yaml:1: inputs[1]: '.gpt_batch_manager/**/*.jsonl' matches no files outside "
        ".gpt_batch_manager/ (gpt_batch_manager's state), which holds results and build state, "
        f"not inputs: globs are relative to the config's directory, {work}"
    ]
    write(work, "inputs: ['**/*.jsonl']\n")
    assert load_spec("batch.yaml").inputs == (work / "data" / "e.jsonl", work / "in.jsonl")
    assert SIMULATED_SUFFIX == "-simulated"


def test_a_glob_matching_only_results_says_so(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (work / "in.jsonl").unlink()
    monkeypatch.setenv("GPTBATCH_STATE_DIR", "state")
    touch(work, "out/a.jsonl", "out-simulated/a.jsonl", "state/x.jsonl")
    write(work, "inputs: ['**/*.jsonl']\n")
    assert config_problems("batch.yaml") == [
        "batch.yaml:1: inputs[0]: '**/*.jsonl' matches no files outside output_dir out/ and "
        "out-simulated/ (build --simulate's output) and GPTBATCH_STATE_DIR state/, which hold "
        "results and build state, not inputs: globs are relative to the config's directory, "
        f"{work}"
    ]


def test_a_literal_input_inside_output_dir_is_an_error(work: Path) -> None:
    touch(work, "results/in.jsonl")
    write(work, "inputs: [results/in.jsonl]\noutput_dir: results\n")
    assert config_problems("batch.yaml") == [
        "batch.yaml:1: inputs[0]: 'results/in.jsonl' is under output_dir results/, which holds "
        "results and build state, not inputs: move the input elsewhere, or give output_dir a "
        "directory of its own"
    ]


def test_an_output_dir_reached_through_a_symlink_is_still_excluded(work: Path) -> None:
    touch(work, "out/a.jsonl")
    (work / "link").symlink_to(work / "out")
    write(work, "inputs: [in.jsonl, 'link/*.jsonl']\n")
    [problem] = config_problems("batch.yaml")
    assert problem.startswith(
        "batch.yaml:1: inputs[1]: 'link/*.jsonl' matches no files outside output_dir out/"
    )


def test_the_simulated_suffix_is_the_one_build_writes_to() -> None:
    from gptbatch.config import rehearsal as build

    assert build.SIMULATED_SUFFIX == SIMULATED_SUFFIX
