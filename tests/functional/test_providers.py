"""Providers: Azure OpenAI and OpenAI-compatible services, their caps, against the simulator."""

from __future__ import annotations

from pathlib import Path

from buildkit import chat, make_project, update_config

from gptbatch.config.spec import load_spec
from gptbatch.errors import EXIT_BAD_INPUT, EXIT_OK


def test_azure_defaults_and_what_it_needs(tmp_path: Path, capsys) -> None:
    project = make_project(tmp_path, {"requests.jsonl": [chat("a")]}, api={"provider": "azure"})
    capsys.readouterr()
    assert project.cli("validate") == EXIT_BAD_INPUT
    assert "api.provider azure needs api.base_url" in capsys.readouterr().err
    update_config(
        project, api={"provider": "azure", "base_url": "https://r.openai.azure.com/openai/v1/"}
    )
    spec = load_spec(project.config)
    assert spec.limits.max_requests_per_batch == 100_000  # Azure's per-file cap
    assert spec.api.api_key_env == "AZURE_OPENAI_API_KEY"
    update_config(project, completion_window="48h")
    assert project.cli("validate") == EXIT_BAD_INPUT
    assert "completion_window '48h' is not offered by azure" in capsys.readouterr().err


def test_azure_deployment_names_build_against_a_simulator_with_azure_caps(
    tmp_path: Path, simulator_factory, monkeypatch, capsys
) -> None:
    sim = simulator_factory(max_requests_per_batch=100_000, any_model=True)  # a deployment name
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-test-key")
    reqs = [chat(f"r{i}", model="my-gpt4o-deployment") for i in range(5)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        api={"provider": "azure", "base_url": sim.base_url},
    )
    assert project.build() == EXIT_OK
    out = capsys.readouterr().out
    assert [o["custom_id"] for o in project.output()] == [r["custom_id"] for r in reqs]
    assert "no price for my-gpt4o-deployment" in out  # a deployment name has no list price
    # What was uploaded carries no BOM (Azure rejects one), even if the input had one.
    for f in sim.service.files():
        assert not sim.service.file_content(f["id"]).startswith(b"\xef\xbb\xbf")


def test_a_compatible_service_with_its_own_caps(tmp_path: Path, simulator_factory) -> None:
    # A small service: 4 requests per batch, and a 1h window OpenAI does not offer.
    sim = simulator_factory(max_requests_per_batch=4, completion_windows=("1h", "24h"))
    reqs = [chat(f"r{i}") for i in range(10)]
    project = make_project(
        tmp_path,
        {"requests.jsonl": reqs},
        api={"provider": "compatible", "base_url": sim.base_url},
        limits={"max_requests_per_batch": 4},
        completion_window="1h",
    )
    assert project.build() == EXIT_OK
    sizes = sorted(b["request_counts"]["total"] for b in sim.service.batches())
    assert sizes and max(sizes) <= 4 and sum(sizes) == 10
    assert all(b["status"] == "completed" for b in sim.service.batches())
    assert {b["completion_window"] for b in sim.service.batches()} == {"1h"}
