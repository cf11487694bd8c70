"""Simulators that stand in for GPUs we don't have.

- ``slmpack.sim.vllm``: an OpenAI-compatible server that behaves like a vLLM engine on a
  simulated GPU (``python -m slmpack.sim.vllm``).
- ``slmpack.sim.dcgm``: a dcgm-exporter look-alike for the simulated GPUs of one node
  (``python -m slmpack.sim.dcgm``).

Both take their timing and power from the planner's calibrated performance model, so a packing
the planner recommends can be exercised end to end without a GPU. See docs/sim.md.
"""
