"""A Batch API simulator: the OpenAI Files and Batches API on loopback, over simulated time.

Usage: `with run_simulator(SimConfig.fast()) as sim:` then point an openai client at
`sim.base_url`; `sim.clock`, `sim.journal`, `sim.add_fault(...)` control and observe it.
"""

from gptbatch.simulator.clock import SimClock
from gptbatch.simulator.config import FAULT_HELP, Fault, SimConfig, parse_fault, parse_limit
from gptbatch.simulator.journal import ApiCall, BatchEvent, Billed, Journal
from gptbatch.simulator.results import request_digest
from gptbatch.simulator.server import Simulator, run_simulator
from gptbatch.simulator.service import BatchService
from gptbatch.simulator.validation import ApiError

__all__ = [
    "FAULT_HELP",
    "ApiCall",
    "ApiError",
    "BatchEvent",
    "BatchService",
    "Billed",
    "Fault",
    "Journal",
    "SimClock",
    "SimConfig",
    "Simulator",
    "parse_fault",
    "parse_limit",
    "request_digest",
    "run_simulator",
]
