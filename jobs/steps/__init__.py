"""Steps: what several flows share, each a part a runbook names (jobs/flows/ holds the runbooks).

locks (one job at a time per app, per cron entry), records (a flow's
record by name, or a one-line error), data (services, backups,
checkpoints' archives), environment (a release's one environment), config_apply (running
releases given their environment again, no redeploy),
execution (commands in a release, live output), frontdoor (a node's
nginx from the records), releases (packing, and the parts of starting
one), cron (an app's [cron] entries as beat schedules), reconcile (a node
made to agree with the records). A step never imports a flow.
"""
