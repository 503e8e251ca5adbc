"""Job flows: each reads like the runbook a person would follow.

A flow is a function flow(ctx, **params) returning a summary string or a
(summary, result) pair; raising fails the job with the reason recorded.
jobs/engine/registry.py names each kind's flow and queue; no flow imports another.
"""
