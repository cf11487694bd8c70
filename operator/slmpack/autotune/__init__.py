"""The autotuner: live signals from Prometheus, an online model corrected from them, and the
policy that turns both into scale and repack decisions.

Pure modules (no I/O, no clock): `signals`, `snapshot`, `model`, `policy`. The only module that
talks to the network is `prometheus`.
"""
