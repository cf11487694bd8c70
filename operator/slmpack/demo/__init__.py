"""`slmpack demo`: slmpack's packing against one replica per GPU, on the same load.

Pure pieces: `manifests` (the fleet and the two SLMDeployments), `measure` (rates from
Prometheus samples), `report` (the comparison, its table, JSON and Markdown) and `plot` (the
PNG). The shell: `world` (cluster, runner, operator, Prometheus) and `cli` (`demo_main`).
See docs/demo.md.
"""
