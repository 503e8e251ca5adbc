"""A real Django project (fixtures/apps/djblog, docs/django.md) deployed through the public commands onto a
real test host: config set, deploy; migrate as update_fetch, collectstatic as build, a health view that
reads the database, the node's interpreter by app.ini's python; then a release with a new migration."""

import json
import os
import secrets
import subprocess
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from jobs.models import JobEvent
from tests.test_deploy_flow import FIXTURES, app_copy, deploy, get, get_static
from toppcloud_site.records.models import CronEntry

pytestmark = [pytest.mark.hosts, pytest.mark.worker]

IMMUTABLE = "public, max-age=31536000, immutable"

COMMENT_MODEL = '''

class Comment(models.Model):
    post = models.ForeignKey(Post, on_delete=models.CASCADE, related_name="comments")
    body = models.TextField()
'''
COMMENT_MIGRATION = '''import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("blog", "0001_initial")]
    operations = [
        migrations.CreateModel(
            name="Comment",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("body", models.TextField()),
                ("post", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="comments",
                                           to="blog.post")),
            ],
        ),
    ]
'''
COMMENT_VIEW = '''

def comments(request):
    from blog.models import Comment

    post = Post.objects.create(title="commented", published=True)
    Comment.objects.create(post=post, body="first")
    return HttpResponse(f"comments: {Comment.objects.count()}\\n", content_type="text/plain")
'''


def node_python():
    """major.minor of the node's python3 (the test hosts are this machine)."""
    return subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def outputs(job):
    return "".join(e.data["output"] for e in job.events.filter(kind="output").order_by("seq"))


def step(job, name):
    return job.events.get(kind="step.finished", data__step=name).data


def test_a_django_project_deploys_first_time_and_its_next_migration_too(worker, test_hosts, ready_nodes, tmp_path):
    host, node = test_hosts[0], ready_nodes[0]
    name = f"djblog{os.getpid() % 10000}"
    hostname = f"{name}.test"
    v1 = app_copy(tmp_path, "djblog", name=name, version="1")
    ini = (v1 / "app.ini").read_text()
    (v1 / "app.ini").write_text(ini.replace("python = 3.11", f"python = {node_python()}"))

    # The refusal names the missing secret and the command that sets it; that command then works.
    with pytest.raises(CommandError) as refused:
        call_command("deploy", str(v1), "--node", node.name)
    assert "needs config that is not set: DJANGO_SECRET_KEY" in str(refused.value)
    assert f"manage.py config set KEY VALUE --app {name}" in str(refused.value)
    secret_key = secrets.token_urlsafe(40)
    call_command("config", "set", "DJANGO_SECRET_KEY", secret_key, "--app", name, "--secret")

    started = time.monotonic()
    code, job = deploy(v1, node)
    seconds = time.monotonic() - started
    assert code == 0, job.error
    release = job.params["release"]
    print(f"first deploy of {name}: {seconds:.1f} s (venv {step(job, 'venv').get('seconds')})")
    assert step(job, "python")["python"] == f"/usr/bin/python{node_python()}"
    said = outputs(job)
    assert "Applying blog.0001_initial... OK" in said and "Applying admin.0001_initial... OK" in said
    assert "static files copied to" in said
    health = job.events.get(kind="health").data
    assert (health["path"], health["status"], health["body"]) == ("/healthz", 200, "ok: 0 posts on postgresql\n")
    steps = [e.data["step"] for e in job.events.filter(kind="step.started").order_by("seq")]
    assert steps.index("build") < steps.index("start") < steps.index("update_fetch") < steps.index("health")

    # Pages from the database; static files (its own and the admin's) from nginx, at this release's URL.
    status, page = get(host, hostname, "/")
    assert status == 200 and f'href="/static/{release}/blog/style.css"' in page
    status, headers, body = get_static(host, hostname, f"/static/{release}/blog/style.css")
    assert (status, body) == (200, (FIXTURES / "djblog" / "blog" / "static" / "blog" / "style.css").read_bytes())
    assert headers["Cache-Control"] == IMMUTABLE
    assert parsedate_to_datetime(headers["Last-Modified"]).year >= 2026  # the time it was built, not 1970
    status, headers, body = get_static(host, hostname, f"/static/{release}/admin/css/base.css")
    assert status == 200 and headers["Cache-Control"] == IMMUTABLE and b"DJANGO Admin styles" in body
    status, login = get(host, hostname, "/admin/login/")
    assert status == 200 and f"/static/{release}/admin/css/base.css" in login
    assert CronEntry.objects.get(app__name=name, name="publish").schedule == "*/5 * * * *"
    # The secret reached the app, and no event.
    assert secret_key not in json.dumps(list(JobEvent.objects.filter(job__target__contains=name)
                                             .values_list("data", flat=True)))

    # The next release adds a model and its migration: migrated, then checked, then live.
    v2 = app_copy(tmp_path, "djblog", name=name, version="2")
    (v2 / "app.ini").write_text((v1 / "app.ini").read_text())
    with open(v2 / "blog" / "models.py", "a") as f:
        f.write(COMMENT_MODEL)
    (v2 / "blog" / "migrations" / "0002_comment.py").write_text(COMMENT_MIGRATION)
    with open(v2 / "blog" / "views.py", "a") as f:
        f.write(COMMENT_VIEW)
    urls = (v2 / "djblog" / "urls.py").read_text()
    (v2 / "djblog" / "urls.py").write_text(urls.replace('    path("admin/"', '    path("comments", views.comments),\n'
                                                                             '    path("admin/"'))
    code, job = deploy(v2, node)
    assert code == 0, job.error
    said = outputs(job)
    assert "Applying blog.0002_comment... OK" in said and "blog.0001_initial" not in said
    assert get(host, hostname, "/comments") == (200, "comments: 1\n")
    assert get(host, hostname, "/healthz") == (200, "ok: 1 posts on postgresql\n")
    assert Path(host.root, "apps", name, "releases", job.params["release"], "staticfiles", "blog", "style.css").exists()
