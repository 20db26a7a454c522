"""A Batch API simulator: the OpenAI Files and Batches API on loopback, over simulated time.

Usage: `with run_simulator(SimConfig.fast()) as sim:` then point an openai client at
`sim.base_url`; `sim.clock`, `sim.journal`, `sim.add_fault(...)` control and observe it.
`SimConfig(state_dir=DIR)` saves its state in DIR; a simulator started on DIR again continues
from there (`sim.saved_time` is the simulated time it resumed at).
"""

from gptbatch.simulator.clock import SimClock
from gptbatch.simulator.config import FAULT_HELP, Fault, SimConfig, parse_fault, parse_limit
from gptbatch.simulator.journal import ApiCall, BatchEvent, Billed, Journal
from gptbatch.simulator.results import request_digest
from gptbatch.simulator.server import Simulator, run_simulator
from gptbatch.simulator.service import BatchService
from gptbatch.simulator.state import SimStateError
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
    "SimStateError",
    "Simulator",
    "parse_fault",
    "parse_limit",
    "request_digest",
    "run_simulator",
]
