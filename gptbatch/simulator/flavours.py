"""The simulator as an OpenAI-compatible service that differs from OpenAI (SimConfig.flavour).

The service underneath is OpenAI's; a flavour only changes what crosses the wire, as the
named service does (see gptbatch/api/presets.py on the client side):
- together: uploads must have purpose "batch-api" (plain "batch" is refused), statuses are
  upper case, and a create answers with the batch under "job";
- perplexity: `expires_after` on an upload and `output_expires_after` on a create are
  refused with a 400;
- groq: OpenAI's wire shape (its windows are SimConfig.completion_windows).
Tests can also make any batch report a status string of their choosing (`reported`), as a
service that grew a new status would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gptbatch.simulator.validation import ApiError

__all__ = ["FLAVOURS", "Flavour"]

FLAVOURS = ("openai", "groq", "together", "perplexity")


@dataclass
class Flavour:
    """What one flavour changes on the wire, and statuses a test makes batches report."""

    name: str = "openai"
    reported: dict[str, str] = field(default_factory=dict)  # batch id -> status string

    def __post_init__(self) -> None:
        if self.name not in FLAVOURS:
            raise ValueError(f"unknown flavour {self.name!r}; one of {', '.join(FLAVOURS)}")

    @property
    def purpose(self) -> str:
        """The upload purpose this service wants for batch input files."""
        return "batch-api" if self.name == "together" else "batch"

    # --- requests in -----------------------------------------------------------------

    def upload_purpose(self, purpose: str, expires_after: bool) -> str:
        """The service's own purpose for an upload's purpose; ApiError as it would refuse."""
        if self.name == "perplexity" and expires_after:
            raise ApiError(
                400,
                "'expires_after' is not supported; files expire after 30 days.",
                param="expires_after",
            )
        if self.name == "together":
            if purpose == "batch":
                raise ApiError(
                    400,
                    "Invalid purpose 'batch': batch input files use purpose 'batch-api'.",
                    param="purpose",
                )
            return "batch" if purpose == "batch-api" else purpose
        return purpose

    def list_purpose(self, purpose: str | None) -> str | None:
        """A files.list purpose filter, as the service underneath names it."""
        return "batch" if self.name == "together" and purpose == "batch-api" else purpose

    def check_create(self, params: Any) -> None:
        """ApiError for a batches.create body the service refuses."""
        refused = isinstance(params, dict) and params.get("output_expires_after") is not None
        if self.name == "perplexity" and refused:
            raise ApiError(
                400,
                "'output_expires_after' is not supported; output files are kept 30 days.",
                param="output_expires_after",
            )

    # --- replies out -----------------------------------------------------------------

    def present(self, method: str, parts: list[str], result: Any) -> Any:
        """A reply as the service shapes it."""
        if not isinstance(result, dict):
            return result
        if parts[:2] == ["v1", "files"]:
            if isinstance(result.get("data"), list):
                return {**result, "data": [self._file(f) for f in result["data"]]}
            return self._file(result)
        if parts[:2] == ["v1", "batches"]:
            if isinstance(result.get("data"), list):
                return {**result, "data": [self._batch(b) for b in result["data"]]}
            batch = self._batch(result)
            if self.name == "together" and method == "POST" and len(parts) == 2:
                return {"job": batch, "warning": None}
            return batch
        return result

    def _file(self, f: Any) -> Any:
        if isinstance(f, dict) and f.get("purpose") == "batch":
            return {**f, "purpose": self.purpose}
        return f

    def _batch(self, b: Any) -> Any:
        if not isinstance(b, dict) or "status" not in b:
            return b
        status = self.reported.get(b.get("id", ""), b["status"])
        if self.name == "together" and status == b["status"]:
            status = status.upper()
        return {**b, "status": status}
