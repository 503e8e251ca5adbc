"""Which flow runs each kind of job, and on which queue: the one list of job kinds.

The engine names flows by dotted path and imports one the first time a job of
its kind runs, so it imports no flow (and no flow's domain) itself. A new job
kind is one line here, a flow in jobs/flows/ and an action in jobs/actions.py
(docs/architecture.md).

Queues: "jobs" for orchestration, "nodeops" when the flow touches hosts,
"cron" for scheduled runs. retry_when_worker_lost: start the flow again when
its worker died mid-run (only flows that are safe to run twice).
"""

import functools
import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    flow: str  # "package.module:function"
    queue: str
    retry_when_worker_lost: bool = True

    @property
    def run(self):
        return _load(self.flow)


KINDS = {
    "deploy": Entry("jobs.flows.deploy:deploy", "nodeops", retry_when_worker_lost=False),
    "deploy_many": Entry("jobs.flows.deploy:deploy_many", "jobs", retry_when_worker_lost=False),
    "rollback": Entry("jobs.flows.deploy:rollback", "nodeops", retry_when_worker_lost=False),
    "rolling": Entry("jobs.flows.deploy:rollout", "jobs", retry_when_worker_lost=False),
    "backup": Entry("jobs.flows.data:backup", "nodeops"),
    "restore": Entry("jobs.flows.data:restore", "nodeops", retry_when_worker_lost=False),
    "clear": Entry("jobs.flows.data:clear", "nodeops", retry_when_worker_lost=False),
    "apply_config": Entry("jobs.flows.config:apply_config", "nodeops", retry_when_worker_lost=False),
    "rotate_group_secret": Entry("jobs.flows.config:rotate_group_secret", "nodeops", retry_when_worker_lost=False),
    "cron_run": Entry("jobs.flows.cron:cron_run", "cron", retry_when_worker_lost=False),
    "task": Entry("jobs.flows.tasks:task", "nodeops"),
    "run": Entry("jobs.flows.run:run", "nodeops", retry_when_worker_lost=False),
    "logs": Entry("jobs.flows.logs:logs", "nodeops"),
    "disable": Entry("jobs.flows.frontdoor:disable", "nodeops"),
    "enable": Entry("jobs.flows.frontdoor:enable", "nodeops"),
    "front_door": Entry("jobs.flows.frontdoor:update_front_door", "nodeops"),
    "promote": Entry("jobs.flows.failover:promote", "nodeops", retry_when_worker_lost=False),
    "setup_node": Entry("jobs.flows.nodes:setup_node", "nodeops"),
    "reconcile_node": Entry("jobs.flows.nodes:reconcile_node", "nodeops"),
    "ping_node": Entry("jobs.flows.nodes:ping_node", "nodeops"),
    "balancer": Entry("jobs.flows.balancer:update_balancer", "nodeops"),
    "balancer_health": Entry("jobs.flows.balancer:record_health", "jobs"),
    "replica_add": Entry("jobs.flows.replicas:replica_add", "nodeops", retry_when_worker_lost=False),
    "replica_check": Entry("jobs.flows.replicas:replica_check", "nodeops"),
    "noop": Entry("jobs.flows.noop:noop", "jobs"),
}


class UnknownJobKind(ValueError):
    pass


def entry(kind):
    try:
        return KINDS[kind]
    except KeyError:
        raise UnknownJobKind(f"unknown job kind {kind!r}; known: {', '.join(sorted(KINDS))}") from None


@functools.cache
def _load(path):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
