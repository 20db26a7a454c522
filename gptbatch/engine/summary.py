"""BuildSummary: what one build run did and what is left (filled by every step of the build)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gptbatch.engine.outputs import OutputSummary
from gptbatch.engine.tables import TableSummary
from gptbatch.engine.usage import Usage
from gptbatch.errors import EXIT_FAILED_REQUESTS, EXIT_OK, EXIT_PENDING


@dataclass
class BuildSummary:
    """What a build run did and what is left."""

    total: int = 0
    ok: int = 0
    failed: int = 0
    pending: int = 0
    submitted: int = 0
    adopted: int = 0
    refusals: int = 0
    cost_committed: float | None = 0.0  # None: a model without a known price
    stopped_by_cost: str | None = None
    usage_run: Usage = field(default_factory=Usage)  # results collected by this run
    usage_total: Usage = field(default_factory=Usage)  # every result of the project
    seconds: float = 0.0
    outputs: list[OutputSummary] = field(default_factory=list)
    tables: list[TableSummary] = field(default_factory=list)  # data targets' answer tables

    @property
    def exit_code(self) -> int:
        if self.pending:
            return EXIT_PENDING
        return EXIT_FAILED_REQUESTS if self.failed else EXIT_OK
