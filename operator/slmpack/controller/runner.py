"""Runs the operator: kopf watches feeding the controller, /metrics and /healthz."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from prometheus_client import start_http_server

from slmpack.autotune.prometheus import PrometheusClient
from slmpack.controller import autotuner as tuner
from slmpack.controller.kube import CONNECTION_POOL_SIZE, KubeApi, load_api_client
from slmpack.controller.metrics import OperatorMetrics
from slmpack.controller.reconciler import Controller
from slmpack.controller.settings import Settings
from slmpack.handlers import build_registry

FIELD_MANAGER = "slmpack-operator"
log = logging.getLogger("slmpack.operator")


def run_operator(settings: Settings, kubeconfig: str | None = None) -> None:
    """Blocks until SIGINT/SIGTERM."""
    if kubeconfig:
        # kopf reads the same kubeconfig through $KUBECONFIG.
        os.environ["KUBECONFIG"] = kubeconfig
    metrics = OperatorMetrics()
    api_client = load_api_client(kubeconfig)
    api = KubeApi(api_client, FIELD_MANAGER, on_write=metrics.count_write)
    autotune_api = KubeApi(api_client, tuner.FIELD_MANAGER, on_write=metrics.count_write)
    holder: dict[str, Controller] = {}
    autotuners: list[tuner.Autotuner] = []

    def controller() -> Controller:
        return holder["controller"]

    registry = build_registry(controller)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A custom registry has no default login handlers: in-cluster first, then kubeconfig.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's own Events and progress annotations would be writes on every pass.
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.error_backoffs = [1, 2, 5, 10, 20, 30]
        settings.peering.lifetime = settings_.peering_lifetime_seconds
        # API calls run in threads (the client is synchronous): one per pooled connection.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(CONNECTION_POOL_SIZE, thread_name_prefix="kube-api")
        )
        controller = holder["controller"] = Controller(api, settings_, metrics)
        await controller.prime()
        controller.start()
        prometheus = tuner.prometheus_config(settings_.autotune)
        autotuners.append(
            tuner.Autotuner(
                controller,
                autotune_api,
                settings_,
                PrometheusClient(prometheus) if prometheus is not None else None,
            )
        )
        autotuners[0].start()

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        for autotuner in autotuners:
            await autotuner.stop()
        if "controller" in holder:
            await holder["controller"].stop()

    settings_ = settings
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=metrics.registry)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    log.info("Starting slmpack operator (namespaces: %s)", ", ".join(settings.namespaces) or "all")
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=not settings.peering,
            peering_name=settings.peering or None,
            priority=settings.priority,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=liveness,
        )
    )
