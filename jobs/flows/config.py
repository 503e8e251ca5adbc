"""Config apply and group secret rotation: running releases get the config as it is now, no restart.

Apply, for each app: take its lock; refuse if its live release's
config.required is not set; then on each node where it is live: make sure
of its data services (their variables are part of the environment); write
the new environment beside the old one; check that the app loads with it;
put it in place; reload gunicorn gracefully (HUP: new workers start with
the new environment, the old ones finish their requests); ask its health
URL; record config.applied with the config version it now runs with.

Rotate the group secret: a new TOPPCLOUD_GROUP_SECRET for the group (the
old one stays available as TOPPCLOUD_GROUP_SECRET_PREVIOUS), then apply to
every app of the group.

A node where applying fails keeps the environment it had: the old env file
and workers if the app does not load with the new one, the old env file
put back and reloaded again if the health URL fails after the reload. The
job fails naming it, after trying the others.
"""

from jobs.steps import config_apply, environment, records
from toppcloud_site.records import audit
from toppcloud_site.records.models import App


def apply_config(ctx, apps):
    """Give the apps' running releases the config as it is now.

    For each app: lock.taken (its lock); on each node where it is live:
    1. apply APP on NODE: its data services, the new environment beside the old one, checked, put in
       place, gunicorn reloaded (HUP); config.applied
    2. health APP on NODE: ask its health URL (a failure: the old environment put back)
    """
    return config_apply.apply_to_apps(ctx, [records.app(name) for name in apps])


def rotate_group_secret(ctx, group):
    """A new shared secret for a server group, then the config applied to every app of it.

    1. rotate: a new TOPPCLOUD_GROUP_SECRET (the old one stays as TOPPCLOUD_GROUP_SECRET_PREVIOUS)
    2. apply APP on NODE, health APP on NODE: as apply_config, for each app of the group
    """
    group = records.group(group)
    with ctx.step("rotate"), audit.acting_as(f"{ctx.job.actor_kind}:{ctx.job.actor}"):
        environment.rotate_group_secret(group)  # an audit entry, the values masked
    summary, result = config_apply.apply_to_apps(ctx, list(App.objects.filter(group=group).order_by("name")))
    return f"{group.name} has a new shared secret; {summary}", result
