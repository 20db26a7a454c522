"""The Spec model and its assembly: load_spec, defaults, providers, project id, .env, the key."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dotenv import load_dotenv
from jsonschema import Draft202012Validator

from gptbatch.api.presets import PRESETS, UNSUPPORTED, window_offered, windows_text
from gptbatch.canonical import canonical_json, content_hash
from gptbatch.config.input_files import expand_inputs
from gptbatch.config.messages import (
    key_in_config,
    looks_like_key,
    non_finite_problem,
    schema_problems,
)
from gptbatch.config.rehearsal import SIMULATED_SUFFIX
from gptbatch.config.targets import load_targets
from gptbatch.config.yaml_source import (
    duplicate_keys,
    is_request_file,
    line_of,
    locate,
    non_finite_paths,
    parse_yaml,
    read_text,
    request_file_problem,
)
from gptbatch.errors import ConfigError, InputError, Problem, redact
from gptbatch.inputs.render import Target, render_directory, render_targets, rendered_path
from gptbatch.state.store import state_dir

SCHEMA_PATH = Path(__file__).parents[1] / "schema" / "batch.schema.json"
RESERVED_METADATA_PREFIX = "gptbatch_"  # gptbatch's own 4 of the API's 16 metadata pairs

_PROJECT_CHARS = re.compile(r"[^A-Za-z0-9._:-]+")


@dataclass(frozen=True)
class Limits:
    """Caps that packing and queueing respect."""

    enqueued_tokens: int | Mapping[str, int] | None
    safety_margin: float
    max_requests_per_batch: int
    max_bytes_per_batch: int
    enqueued_requests: int | Mapping[str, int] | None
    max_cost: float | None
    pipeline: int = 4
    # Where max_cost came from: "config" (a cap on the project's committed spend) or
    # "--max-cost" (a cap on what one build commits).
    max_cost_from: str = "config"

    def models(self) -> list[str]:
        """Models named in the per-model limit maps (not "*")."""
        names: set[str] = set()
        for value in (self.enqueued_tokens, self.enqueued_requests):
            if isinstance(value, Mapping):
                names.update(k for k in value if k != "*")
        return sorted(names)

    def token_limit(self, model: str) -> int | None:
        """The enqueued-token limit for model (a map's "*" covers other models); None: none."""
        return _per_model(self.enqueued_tokens, model)

    def request_limit(self, model: str) -> int | None:
        """The enqueued-request limit for model (a map's "*" covers other models); None: none."""
        return _per_model(self.enqueued_requests, model)

    def token_budget(self, model: str) -> int | None:
        """The token limit for model less the safety margin; None when there is no limit."""
        limit = self.token_limit(model)
        return None if limit is None else int(limit * (1.0 - self.safety_margin))


@dataclass(frozen=True)
class Polling:
    """Backoff for batch status checks."""

    initial_seconds: float
    max_seconds: float
    factor: float


@dataclass(frozen=True)
class ApiSettings:
    """How to reach the API; holds the key's variable name, never the key."""

    base_url: str | None
    api_key_env: str
    organization: str | None
    project: str | None
    provider: str = "openai"


@dataclass(frozen=True)
class Provider:
    """What a Batch API provider accepts, where it differs from OpenAI."""

    max_requests_per_batch: int
    completion_windows: tuple[str, ...] | None  # None: whatever the service takes
    needs_base_url: bool
    api_key_env: str


PROVIDERS: dict[str, Provider] = {
    "openai": Provider(50_000, ("24h",), False, "OPENAI_API_KEY"),
    "azure": Provider(100_000, ("24h",), True, "AZURE_OPENAI_API_KEY"),
    "compatible": Provider(50_000, None, True, "OPENAI_API_KEY"),
    # Message Batches: requests inline, custom_ids are content keys (see api/anthropic.py).
    "anthropic": Provider(100_000, ("24h",), False, "ANTHROPIC_API_KEY"),
    # Batch mode: {key, request} uploads, one model per job (see api/gemini.py). Google
    # states no request cap per job (files up to 2 GB): 100,000 is gptbatch's default.
    "gemini": Provider(100_000, ("24h",), False, "GEMINI_API_KEY"),
    # OpenAI-compatible services by name (api/presets.py: caps, windows and quirks).
    **{
        name: Provider(preset.caps.max_requests, None, False, preset.key_env)
        for name, preset in PRESETS.items()
    },
    # Named so that choosing it says why it cannot be used (_provider_problems).
    **{name: Provider(50_000, None, False, f"{name.upper()}_API_KEY") for name in UNSUPPORTED},
}
ANTHROPIC_ENDPOINT = "/v1/messages"  # the endpoint of every request of an anthropic target
GEMINI_ENDPOINT = "/v1beta/generateContent"  # the endpoint of every request of a gemini target
OWN_ENDPOINTS = {"anthropic": ANTHROPIC_ENDPOINT, "gemini": GEMINI_ENDPOINT}


@dataclass(frozen=True)
class Spec:
    """A loaded, validated batch.yaml with defaults applied and paths made absolute."""

    path: Path
    root: Path
    inputs: tuple[Path, ...]
    output_dir: Path
    project: str
    model: str | None
    endpoint: str | None
    limits: Limits
    completion_window: str
    metadata: Mapping[str, str]
    retries: int
    polling: Polling
    api: ApiSettings
    prices: Mapping[str, Mapping[str, float]]
    upload_expires_after: int = 2_592_000
    output_expires_after: int | None = None
    delete_uploads: bool = False
    # Data targets by name -> the request file each renders to (also among inputs).
    targets: Mapping[str, Path] = field(default_factory=dict)
    # The data targets themselves, in config order (answers tables, invalid answers).
    data_targets: tuple[Target, ...] = ()


def load_schema() -> dict[str, Any]:
    """The batch.yaml JSON Schema shipped in the package."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def load_spec(
    path: str | Path | None = None,
    *,
    sample: int | None = None,
    simulate: bool = False,
    build: bool = False,
) -> Spec:
    """Load and validate a config (default ./batch.yaml); raise ConfigError listing every problem.

    Also loads `.env` beside the config and in the working directory (existing variables win).
    Every message passes through redact(): a key pasted into the config is never printed back.
    sample: render that many rows of each data target (build --sample); simulate: steps take
    their upstream answers from the rehearsal's output directory, and data targets render
    into its state; build: render data targets into the state directory, creating it (other
    commands render into a scratch directory until a build made one).
    """
    try:
        return _load(path, sample, simulate, build)
    except ConfigError as exc:
        raise ConfigError(
            [Problem(p.path, p.line, redact(p.message), redact(p.hint)) for p in exc.problems],
            truncated=exc.truncated,
        ) from None


def _load(
    path: str | Path | None,
    sample: int | None = None,
    simulate: bool = False,
    build: bool = False,
) -> Spec:
    config, display = locate(path)
    text = read_text(config, display)
    if is_request_file(text):
        raise ConfigError(request_file_problem(config, display))
    data, node = parse_yaml(text, display)
    schema = load_schema()
    # jsonschema lets NaN through every bound; say "not finite" once instead of its messages.
    non_finite = [path for path in non_finite_paths(data, []) if path]
    errors = [
        e
        for e in Draft202012Validator(schema).iter_errors(data)
        if not any(list(e.absolute_path)[: len(p)] == p for p in non_finite)
    ]
    problems = duplicate_keys(node, display)
    problems += [non_finite_problem(path, node, display) for path in non_finite]
    problems += schema_problems(errors, node, schema, display)
    if errors and not isinstance(data, dict):
        raise ConfigError(problems)
    # Check what the schema cannot wherever the keys involved are valid, to report all at once.
    invalid = {e.absolute_path[0] for e in errors if e.absolute_path}
    invalid.update(path[0] for path in non_finite)
    invalid.update(
        k
        for e in errors
        if e.validator == "required" and not e.absolute_path
        for k in e.validator_value
    )
    full = _with_defaults(data, schema)
    if "api" not in invalid:
        _apply_provider(data, full)
    root = config.parent
    output_dir = Path(os.path.abspath(root / os.path.expanduser(str(full.get("output_dir")))))
    inputs: tuple[Path, ...] = ()
    later: list[Problem] = []
    targets: dict[int, Target] = {}
    rendered: dict[int, Path] = {}
    render_in = output_dir
    if not invalid & {"inputs", "output_dir"}:
        # A rehearsal's data targets render into its own state and read its own tables.
        tables = (
            output_dir.with_name(output_dir.name + SIMULATED_SUFFIX) if simulate else output_dir
        )
        targets, later = load_targets(
            full["inputs"], root, node, display, tables, output_dir, _provider_name(full, invalid)
        )
        render_in = render_directory(state_dir(tables), build=build) if targets else tables
        rendered = {i: rendered_path(render_in, t.name) for i, t in targets.items()}
        files, wrong = expand_inputs(full["inputs"], root, output_dir, node, display, rendered)
        inputs, later = files, later + wrong
    later += _semantic_problems(full, node, display, invalid)
    if not invalid & {"api", "limits", "completion_window"}:
        later += _provider_problems(full, node, display)
    problems += sorted(later, key=lambda p: p.line or 0)
    if problems:
        raise ConfigError(problems)
    # Data targets render (when their data or template changed) once the config is valid.
    try:
        if targets:
            render_targets(list(targets.values()), render_in, sample=sample)
    except InputError as exc:
        raise ConfigError(exc.problems, truncated=exc.truncated) from None
    _load_env(root)
    return Spec(
        path=config,
        root=root,
        inputs=inputs,
        output_dir=output_dir,
        project=full["project"] or default_project(full["output_dir"], _as_written(full["inputs"])),
        model=full["model"],
        endpoint=full["endpoint"],
        limits=_limits(full["limits"]),
        completion_window=full["completion_window"],
        metadata=dict(full["metadata"]),
        retries=int(full["retries"]),
        polling=Polling(**{k: float(v) for k, v in full["polling"].items()}),
        api=ApiSettings(**full["api"]),
        prices={
            model: {k: float(v) for k, v in price.items()}
            for model, price in full["prices"].items()
        },
        upload_expires_after=int(full["upload_expires_after"]),
        output_expires_after=full["output_expires_after"],
        delete_uploads=bool(full["delete_uploads"]),
        targets={t.name: rendered[i] for i, t in targets.items()},
        data_targets=tuple(targets[i] for i in sorted(targets)),
    )


def config_fingerprint(spec: Spec) -> str:
    """What of batch.yaml shapes an input's rows: defaults (in keys) and prices (in costs)."""
    return canonical_json(
        {"model": spec.model, "endpoint": spec.endpoint, "prices": content_hash(spec.prices)}
    ).decode()


def keys_config_changed(old: str, new: str) -> bool:
    """Did model or endpoint (which go into keys) change between two fingerprints?"""
    a, b = json.loads(old), json.loads(new)
    return (a.get("model"), a.get("endpoint")) != (b.get("model"), b.get("endpoint"))


def api_key(spec: Spec) -> str | None:
    """The API key from the environment variable the spec names (after loading .env)."""
    _load_env(spec.root)
    return os.environ.get(spec.api.api_key_env) or None


# --- defaults and cross-field checks ----------------------------------------------------------


def _with_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """value with the schema's documented defaults filled in for missing keys, recursively."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for key, sub in schema["properties"].items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _with_defaults(out[key], sub)
    return out


def _provider_name(full: Mapping[str, Any], invalid: set[Any]) -> str:
    """api.provider, or openai while the api section is wrong (reported on its own)."""
    api = full.get("api")
    if "api" in invalid or not isinstance(api, Mapping):
        return "openai"
    return str(api.get("provider") or "openai")


def _apply_provider(data: Mapping[str, Any], full: dict[str, Any]) -> None:
    """Defaults that depend on api.provider, where the config leaves them out."""
    provider = PROVIDERS[full["api"]["provider"]]
    given_limits = data.get("limits") if isinstance(data.get("limits"), dict) else {}
    given_api = data.get("api") if isinstance(data.get("api"), dict) else {}
    if isinstance(full.get("limits"), dict) and "max_requests_per_batch" not in given_limits:
        full["limits"]["max_requests_per_batch"] = provider.max_requests_per_batch
    if "api_key_env" not in given_api:
        full["api"]["api_key_env"] = provider.api_key_env
    preset = PRESETS.get(full["api"]["provider"])
    if preset is not None:
        if not full["api"].get("base_url"):
            full["api"]["base_url"] = preset.base_url
        if isinstance(full.get("limits"), dict) and "max_bytes_per_batch" not in given_limits:
            full["limits"]["max_bytes_per_batch"] = preset.caps.max_bytes
    own = OWN_ENDPOINTS.get(full["api"]["provider"])
    if own is not None and full.get("endpoint") is None:
        full["endpoint"] = own  # every request is a Messages / generateContent request


def _provider_problems(full: Mapping[str, Any], node: yaml.Node, display: str) -> list[Problem]:
    """A config that its provider would refuse: caps, completion windows, a missing base_url."""
    name = full["api"]["provider"]
    provider = PROVIDERS[name]
    if name in UNSUPPORTED:
        return [
            Problem(
                display,
                line_of(node, ["api", "provider"]),
                f"api.provider {name} is not supported: {UNSUPPORTED[name]}",
                "use another provider",
            )
        ]
    problems = _preset_problems(full, node, display)
    if provider.needs_base_url and not full["api"]["base_url"]:
        example = (
            "https://YOUR-RESOURCE.openai.azure.com/openai/v1/"
            if name == "azure"
            else "the service's URL ending in /v1"
        )
        problems.append(
            Problem(
                display,
                line_of(node, ["api", "provider"]),
                f"api.provider {name} needs api.base_url",
                f"set api.base_url, e.g. {example}",
            )
        )
    limits = full.get("limits")
    cap = provider.max_requests_per_batch
    if isinstance(limits, dict) and int(limits.get("max_requests_per_batch", 0)) > cap:
        problems.append(
            Problem(
                display,
                line_of(node, ["limits", "max_requests_per_batch"]),
                f"limits.max_requests_per_batch {limits['max_requests_per_batch']} is over "
                f"{name}'s cap of {cap:,} requests per batch",
                f"use at most {cap}",
            )
        )
    if name in OWN_ENDPOINTS and full.get("endpoint") != OWN_ENDPOINTS[name]:
        what = "Messages" if name == "anthropic" else "generateContent"
        problems.append(
            Problem(
                display,
                line_of(node, ["endpoint"]),
                f"endpoint {full.get('endpoint')} is an OpenAI endpoint; api.provider {name} "
                f"sends {what} requests",
                "remove endpoint from the config",
            )
        )
    if name == "anthropic" and isinstance(limits, dict) and limits.get("enqueued_tokens"):
        problems.append(
            Problem(
                display,
                line_of(node, ["limits", "enqueued_tokens"]),
                "limits.enqueued_tokens does not apply to api.provider anthropic: its queue is "
                "limited by requests, and Claude's tokens cannot be counted offline",
                "use limits.enqueued_requests instead",
            )
        )
    windows = provider.completion_windows
    if windows is not None and full["completion_window"] not in windows:
        problems.append(
            Problem(
                display,
                line_of(node, ["completion_window"]),
                f"completion_window {full['completion_window']!r} is not offered by {name}",
                f"use {' or '.join(windows)} (other windows need api.provider: compatible)",
            )
        )
    return problems


def _preset_problems(full: Mapping[str, Any], node: yaml.Node, display: str) -> list[Problem]:
    """What a named OpenAI-compatible service would refuse: its bytes cap, windows, expiries."""
    name = full["api"]["provider"]
    preset = PRESETS.get(name)
    if preset is None:
        return []
    problems = []
    limits = full.get("limits")
    cap = preset.caps.max_bytes
    if isinstance(limits, dict) and int(limits.get("max_bytes_per_batch", 0)) > cap:
        problems.append(
            Problem(
                display,
                line_of(node, ["limits", "max_bytes_per_batch"]),
                f"limits.max_bytes_per_batch {limits['max_bytes_per_batch']} is over "
                f"{name}'s cap of {cap:,} bytes per batch",
                f"use at most {cap}",
            )
        )
    if not window_offered(preset, str(full["completion_window"])):
        problems.append(
            Problem(
                display,
                line_of(node, ["completion_window"]),
                f"completion_window {full['completion_window']!r} is not offered by {name}",
                f"use {windows_text(preset)}",
            )
        )
    if not preset.file_expiry and full.get("upload_expires_after") != 2_592_000:
        problems.append(
            Problem(
                display,
                line_of(node, ["upload_expires_after"]),
                f"upload_expires_after: {name} rejects it (its files expire after 30 days)",
                "remove upload_expires_after from the config",
            )
        )
    if not preset.output_expiry and full.get("output_expires_after") is not None:
        problems.append(
            Problem(
                display,
                line_of(node, ["output_expires_after"]),
                f"output_expires_after: {name} rejects it (its results are kept 30 days)",
                "remove output_expires_after from the config",
            )
        )
    return problems


def _semantic_problems(
    full: Mapping[str, Any], node: yaml.Node, display: str, invalid: set[Any]
) -> list[Problem]:
    """Rules the schema cannot say, for keys that passed it: polling order, reserved metadata."""
    problems = []
    polling = full["polling"]
    if "polling" not in invalid and polling["initial_seconds"] > polling["max_seconds"]:
        problems.append(
            Problem(
                display,
                line_of(node, ["polling", "initial_seconds"]),
                f"polling.initial_seconds ({polling['initial_seconds']}) is greater than "
                f"polling.max_seconds ({polling['max_seconds']})",
                "the first wait cannot be longer than the longest wait; lower it or raise "
                "max_seconds",
            )
        )
    key_env = full["api"].get("api_key_env") if "api" not in invalid else None
    if looks_like_key(key_env):  # a key that happens to fit the variable-name pattern
        problems.append(key_in_config(node, key_env, display))
    for key in full["metadata"] if "metadata" not in invalid else ():
        if str(key).startswith(RESERVED_METADATA_PREFIX):
            problems.append(
                Problem(
                    display,
                    line_of(node, ["metadata", key], key=True),
                    f"metadata: key {key!r} is reserved",
                    f"keys starting with {RESERVED_METADATA_PREFIX} are gptbatch's own; rename it",
                )
            )
    return problems


def _limits(raw: Mapping[str, Any]) -> Limits:
    def count(value: Any) -> int | dict[str, int] | None:
        if isinstance(value, dict):
            return {str(k): int(v) for k, v in value.items()}
        return None if value is None else int(value)

    return Limits(
        enqueued_tokens=count(raw["enqueued_tokens"]),
        safety_margin=float(raw["safety_margin"]),
        max_requests_per_batch=int(raw["max_requests_per_batch"]),
        max_bytes_per_batch=int(raw["max_bytes_per_batch"]),
        enqueued_requests=count(raw["enqueued_requests"]),
        max_cost=None if raw["max_cost"] is None else float(raw["max_cost"]),
        pipeline=int(raw.get("pipeline", 4)),
    )


def _per_model(value: int | Mapping[str, int] | None, model: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return value.get(model, value.get("*"))


def _as_written(inputs: Sequence[Any]) -> list[str]:
    """Inputs for the default project id: a target by its name, so editing it keeps the id."""
    return [i if isinstance(i, str) else f"target:{i['name']}" for i in inputs]


def default_project(output_dir: str, inputs: Sequence[str]) -> str:
    """The project id when batch.yaml sets none: from output_dir and inputs as written.

    Not from the config's file name or where the checkout lives: a renamed config, a moved
    checkout or another CI runner must find the batches an earlier run left at the API.
    """
    stem = _PROJECT_CHARS.sub("-", Path(output_dir).name).strip(".-_:")[:40] or "gptbatch"
    digest = content_hash({"output_dir": output_dir, "inputs": list(inputs)})[:8]
    return f"{stem}-{digest}"


def _load_env(root: Path) -> None:
    """Load .env beside the config, then in the working directory; existing variables win."""
    for directory in (root, Path.cwd()):
        env = directory / ".env"
        if env.is_file():
            load_dotenv(env, override=False)
