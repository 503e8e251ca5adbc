"""Job flows: each reads like the runbook a person would follow.

A flow is a function flow(ctx, **params) returning a summary string or a
(summary, result) pair; raising fails the job with the reason recorded.
"""

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Flow:
    name: str
    run: Callable
    queue: str  # "jobs" for orchestration, "nodeops" when it touches hosts, "cron" for scheduled runs
    # Start it again when its worker died mid-run (idempotent flows only).
    retry_when_worker_lost: bool = True


FLOWS: dict[str, Flow] = {}


def flow(name, *, queue, retry_when_worker_lost=True):
    def register(fn):
        FLOWS[name] = Flow(name, fn, queue, retry_when_worker_lost)
        return fn

    return register


from jobs.flows import config, cron, data, deploy, frontdoor, logs, nodes, noop, run, tasks  # noqa: E402,F401  (register the flows)
