"""Open-loop load generator for OpenAI-compatible servers (vLLM, vllm-sim, the Packed router).

Pure pieces: `arrivals` (when requests are sent), `lengths` (how long prompts and outputs are),
`workload` (the planned requests and their bodies), `sse` (parsing a streamed response) and
`stats` (percentiles, throughput, goodput). The shell: `driver` (one aiohttp session, one task
per request in flight) and `cli` (`python -m slmpack.loadgen`, `load_main(argv)`).
See docs/loadgen.md.
"""

from slmpack.loadgen.arrivals import Phase, Schedule, arrival_times
from slmpack.loadgen.driver import DriverConfig, RunResult, run_load
from slmpack.loadgen.lengths import Fixed, LogNormal, Uniform, sharegpt_input, sharegpt_output
from slmpack.loadgen.stats import Report, RequestRecord, Slo, summarize
from slmpack.loadgen.workload import PlannedRequest, plan_requests

__all__ = [
    "DriverConfig",
    "Fixed",
    "LogNormal",
    "Phase",
    "PlannedRequest",
    "Report",
    "RequestRecord",
    "RunResult",
    "Schedule",
    "Slo",
    "Uniform",
    "arrival_times",
    "plan_requests",
    "run_load",
    "sharegpt_input",
    "sharegpt_output",
    "summarize",
]
