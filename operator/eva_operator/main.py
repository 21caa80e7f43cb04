"""``eva-operator``: run the operator (settings from the environment, see ``config``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf
from prometheus_client import start_http_server

from eva_operator.config import OperatorConfig
from eva_operator.metrics import OperatorMetrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="eva-operator", description="Reconcile EvaRun resources into step Jobs."
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=None,
        help="watch this namespace (repeatable) [env EVA_WATCH_NAMESPACES=a,b]",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch the whole cluster (default)"
    )
    p.add_argument(
        "--bind-address",
        help="address the metrics, health and webhook servers listen on "
        "[EVA_OPERATOR_BIND_ADDRESS=0.0.0.0]",
    )
    p.add_argument(
        "--metrics-port", type=int, help="/metrics port [EVA_OPERATOR_METRICS_PORT=8080]"
    )
    p.add_argument(
        "--health-port", type=int, help="/healthz port, 0 = off [EVA_OPERATOR_HEALTH_PORT=8081]"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Flags win over the environment; the process environment itself is left as it is.
    environ = dict(os.environ)
    if args.namespace:
        environ["EVA_WATCH_NAMESPACES"] = ",".join(args.namespace)
    if args.all_namespaces:
        environ["EVA_WATCH_NAMESPACES"] = ""
    for name, value in (
        ("EVA_OPERATOR_BIND_ADDRESS", args.bind_address),
        ("EVA_OPERATOR_METRICS_PORT", args.metrics_port),
        ("EVA_OPERATOR_HEALTH_PORT", args.health_port),
    ):
        if value is not None:
            environ[name] = str(value)
    try:
        cfg = OperatorConfig.from_env(environ)
    except ValueError as exc:
        print(f"eva-operator: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # one line per handler call and per probe is noise at this level
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from eva_operator.handlers import registry

    metrics = OperatorMetrics()
    if cfg.metrics_port:
        try:
            start_http_server(cfg.metrics_port, addr=cfg.bind_address, registry=metrics.registry)
        except OSError as exc:
            print(
                f"eva-operator: cannot serve /metrics on {cfg.bind_address}:{cfg.metrics_port}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            sys.exit(2)
    host = f"[{cfg.bind_address}]" if ":" in cfg.bind_address else cfg.bind_address
    liveness = f"http://{host}:{cfg.health_port}/healthz" if cfg.health_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=not cfg.namespaces,
            namespaces=cfg.namespaces,
            liveness_endpoint=liveness,
            standalone=True,
            registry=registry(cfg),
            memo=kopf.Memo(config=cfg, metrics=metrics),
        )
    )


if __name__ == "__main__":  # pragma: no cover
    main()
