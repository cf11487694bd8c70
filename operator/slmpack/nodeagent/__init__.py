"""The slmpack node agent: a DaemonSet on GPU nodes that reads NVML and publishes what DCGM
cannot say under GPU sharing: which replica used how much memory, SM time and energy.

Pure parts: `readings` (what one NVML pass saw), `inventory` (the node annotation, readable by
the operator without NVML or Kubernetes imports), `cgroups` (pid to pod), `attribution`
(energy split), `metrics` (metric families from a snapshot). Shell: `nvml` (pynvml and the
device-file fake of `fake_nvml`), `kube` (the API server), `agent` (the sampling loop), `server`
(/metrics and /healthz) and `app` (the command line).

This module imports nothing, so `slmpack.nodeagent.inventory` stays cheap to import.
"""
