"""The front door of real test hosts: static URLs, per-path apps, maintenance, bad locations, refused renders.

Real nginx, real gunicorn, real HTTP: every assertion is on the bytes and
headers a host serves, the job's events or the files on the node.
"""

import http.client
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.models import Job, LiveRelease
from nodeops import frontdoor as node_frontdoor
from nodeops.layout import NodeLayout
from tests.helpers import event_kinds, wait_for_job
from tests.test_deploy_flow import Load, deploy, rollback
from toppcloud_site.records.models import App, AuditEntry, Certificate, Location

pytestmark = [pytest.mark.hosts, pytest.mark.worker]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "apps"
IMMUTABLE = "public, max-age=31536000, immutable"


def request(host, hostname, path="/"):
    """(status, headers as a dict of lower-case names, body bytes)."""
    conn = http.client.HTTPConnection(host.address, host.http_port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": hostname})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def page(host, hostname, path="/"):
    status, _, body = request(host, hostname, path)
    assert status == 200, (status, body[:200])
    return json.loads(body)


def pathy(tmp_path, *, name, location, version="1", css="body { color: black; }\n"):
    dest = tmp_path / f"{name}-{version}"
    shutil.copytree(FIXTURES / "pathy", dest)
    ini = (dest / "app.ini").read_text()
    (dest / "app.ini").write_text(ini.replace("app_name = pathy", f"app_name = {name}")
                                  .replace("default_location = pathy.test", f"default_location = {location}"))
    (dest / "VERSION").write_text(version + "\n")
    (dest / "static" / "style.css").write_text(css)
    return dest


def job_of(kind, before):
    return Job.objects.filter(queued_at__gt=before, kind=kind).order_by("queued_at").last()


def command(name, *args, kind=None):
    before = timezone.now()
    with pytest.raises(SystemExit) as exit_info:
        call_command(name, *args)
    return exit_info.value.code, job_of(kind or name, before)


def test_static_files_are_versioned_far_future_and_an_old_releases_urls_keep_working(test_hosts, ready_nodes,
                                                                                     tmp_path):
    host, node = test_hosts[0], ready_nodes[0]
    name = f"stat{os.getpid() % 10000}"
    hostname = f"{name}.test"
    assert deploy(pathy(tmp_path, name=name, location=hostname, css="v1 { }\n"), node)[0] == 0
    first = page(host, hostname)
    release1 = LiveRelease.objects.get(app__name=name, node=node).release.name
    assert first["static_url"] == f"/static/{release1}/"

    status, headers, body = request(host, hostname, first["stylesheet"])
    assert (status, body) == (200, b"v1 { }\n")
    assert headers["cache-control"] == IMMUTABLE and headers["content-type"] == "text/css"
    # The older pattern: the live release's static/ at its own path, cached for an hour.
    status, headers, body = request(host, hostname, "/static/style.css")
    assert (status, body) == (200, b"v1 { }\n") and headers["cache-control"] == "max-age=3600"
    assert "expires" in headers

    assert deploy(pathy(tmp_path, name=name, location=hostname, version="2", css="v2 { }\n"), node)[0] == 0
    second = page(host, hostname)
    assert second["version"] == "2" and second["static_url"] != first["static_url"]
    assert request(host, hostname, second["stylesheet"])[::2] == (200, b"v2 { }\n")
    # A page of release 1 still cached somewhere asks for release 1's file: it is still there.
    status, headers, body = request(host, hostname, first["stylesheet"])
    assert (status, body, headers["cache-control"]) == (200, b"v1 { }\n", IMMUTABLE)
    assert request(host, hostname, "/static/style.css")[2] == b"v2 { }\n"
    # A release id no release has is not found; a path climbing out of the static directory never
    # reaches the release's code (nginx resolves the dots first, and /app.py is then the app's URL).
    assert request(host, hostname, "/static/20000101000000-00000000/style.css")[0] == 404
    for climb in (f"/static/{release1}/../../app.py", f"/static/{release1}/%2e%2e/%2e%2e/app.py",
                  f"/static/{release1}/..%2f..%2fapp.py"):
        assert b"def application" not in request(host, hostname, climb)[2], climb


def test_an_app_at_the_root_and_one_at_blog_share_a_host_and_deploy_and_roll_back_independently(
        test_hosts, ready_nodes, tmp_path):
    host, node = test_hosts[0], ready_nodes[0]
    tag = os.getpid() % 10000
    site, blog, hostname = f"site{tag}", f"blog{tag}", f"paths{tag}.test"
    assert deploy(pathy(tmp_path, name=site, location=hostname), node)[0] == 0
    assert deploy(pathy(tmp_path, name=blog, location=f"{hostname}/blog"), node)[0] == 0

    root = page(host, hostname, "/about")
    assert (root["app"], root["script_name"], root["path_info"], root["link"]) == (site, "", "/about", "/posts/1")
    inner = page(host, hostname, "/blog/posts/1?x=1")
    assert (inner["app"], inner["script_name"], inner["path_info"]) == (blog, "/blog", "/posts/1")
    # Links the blog builds (SCRIPT_NAME + its own path) lead back to the blog, and so do its static URLs.
    assert inner["link"] == "/blog/posts/1" and page(host, hostname, inner["link"])["app"] == blog
    assert inner["static_url"].startswith("/blog/static/")
    assert request(host, hostname, inner["stylesheet"])[::2] == (200, b"body { color: black; }\n")
    status, headers, _ = request(host, hostname, "/blog")  # nginx adds the slash
    assert status == 301 and headers["location"].endswith(f"{hostname}:{host.http_port}/blog/"), headers
    assert page(host, hostname, "/bloggers/")["app"] == site

    # toppcloud's own requests (cron, tasks) reach the blog mounted the same way.
    code, job = command("cron", "run", blog, "where", kind="cron_run")
    assert code == 0, job.error
    answer = json.loads(job.events.get(kind="cron.finished").data["body"])
    assert (answer["script_name"], answer["path_info"]) == ("/blog", "/cron/where")

    # The blog's releases come and go; the root app is never touched.
    with Load([host], hostname, path="/", expect=f'"app": "{site}"') as load:
        assert deploy(pathy(tmp_path, name=blog, location=f"{hostname}/blog", version="2"), node)[0] == 0
        assert page(host, hostname, "/blog/")["version"] == "2"
        code, job = rollback(blog, node)
        assert code == 0, job.error
        assert page(host, hostname, "/blog/")["version"] == "1"
    assert load.failures == [] and load.ok > 10, (load.ok, load.failures[:3])
    assert page(host, hostname, "/")["version"] == "1"
    live = open(os.path.join(NodeLayout(host.root).nginx_sites, node_frontdoor.SITE)).read()
    assert live.count(f"server_name {hostname};") == 1  # one server block, both apps' locations in it


def test_maintenance_mode_serves_a_503_page_for_the_app_only(test_hosts, ready_nodes, tmp_path):
    host, node = test_hosts[0], ready_nodes[0]
    tag = os.getpid() % 10000
    main, shop, hostname = f"main{tag}", f"shop{tag}", f"maint{tag}.test"
    assert deploy(pathy(tmp_path, name=main, location=hostname), node)[0] == 0
    assert deploy(pathy(tmp_path, name=shop, location=f"{hostname}/shop"), node)[0] == 0

    code, job = command("disable", shop)
    assert code == 0, job.error
    assert "front_door" in event_kinds(job) and App.objects.get(name=shop).maintenance is True
    status, headers, body = request(host, hostname, "/shop/cart")
    assert status == 503 and b"Down for maintenance" in body and shop.encode() in body
    assert headers["retry-after"] == "300" and headers["content-type"] == "text/html"
    assert page(host, hostname, "/")["app"] == main  # the other app on the host keeps serving

    code, job = command("enable", shop)
    assert code == 0, job.error
    assert page(host, hostname, "/shop/cart")["app"] == shop
    updates = AuditEntry.objects.filter(model="app", object_repr=shop, action="update").order_by("id")
    changes = [(e.actor, e.changes["maintenance"]) for e in updates if "maintenance" in e.changes]
    assert changes == [(f"user:{job.actor}", [False, True]), (f"user:{job.actor}", [True, False])]


def test_a_wildcard_host_serves_every_name_below_it_and_nothing_else(test_hosts, ready_nodes, tmp_path):
    host, node = test_hosts[1], ready_nodes[1]
    name = f"wild{os.getpid() % 10000}"
    assert deploy(pathy(tmp_path, name=name, location=f"*.{name}.test"), node)[0] == 0
    assert page(host, f"a.{name}.test")["app"] == name
    assert page(host, f"b.c.{name}.test")["app"] == name
    status, _, body = request(host, f"{name}.test")
    assert status == 404 and body == b"no app is deployed here\n"


@pytest.mark.parametrize("location, words", [
    ("x.test/../etc", "no '.' or '..' segments"),
    ("x.test/a b", "may contain only letters"),
    ("exa_mple.test", "must be a host name or an IP address"),
    ("x.test:8080", "must be a host name or an IP address"),
])
def test_a_bad_location_is_refused_before_any_job(live_db, nodes, tmp_path, location, words):
    app_dir = pathy(tmp_path, name=f"badloc{os.getpid() % 10000}", location=location)
    jobs_before = Job.objects.count()
    with pytest.raises(CommandError) as error:
        call_command("deploy", str(app_dir), "--node", nodes[0].name)
    assert "default_location" in str(error.value) and words in str(error.value), str(error.value)
    assert Job.objects.count() == jobs_before + 1  # the attempt, recorded as a failed job no worker runs


def test_a_location_another_app_has_is_refused_and_records_refuse_bad_hosts(live_db, nodes, tmp_path):
    from django.core.exceptions import ValidationError

    tag = os.getpid() % 10000
    first = pathy(tmp_path, name=f"own{tag}", location=f"dup{tag}.test/x")
    second = pathy(tmp_path, name=f"thief{tag}", location=f"dup{tag}.test/x")
    from jobs.steps.releases import ReleaseRefused, pack_release

    pack_release(first)
    with pytest.raises(ReleaseRefused, match=f"location dup{tag}.test/x/ belongs to app own{tag}"):
        pack_release(second)
    assert not App.objects.filter(name=f"thief{tag}").exists()
    app = App.objects.get(name=f"own{tag}")
    for host, path in (("bad host", "/"), ("x.test", "/a/../b/"), ("*.10.0.0.1", "/")):
        with pytest.raises(ValidationError):
            Location(app=app, host=host, path=path).full_clean()


def test_a_render_nginx_refuses_leaves_the_live_config_serving(test_hosts, ready_nodes, tmp_path):
    """A certificate record whose key is not the certificate's (written around the checks) makes nginx -t fail."""
    from tests.tlsca import issue, make_ca

    host, node = test_hosts[1], ready_nodes[1]
    name = f"refuse{os.getpid() % 10000}"
    hostname = f"{name}.test"
    assert deploy(pathy(tmp_path, name=name, location=hostname), node)[0] == 0
    site = os.path.join(NodeLayout(host.root).nginx_sites, node_frontdoor.SITE)
    live = open(site).read()
    ca = make_ca(tmp_path / "ca")
    one, other = issue(ca, [hostname], tmp_path / "one"), issue(ca, [hostname], tmp_path / "other")
    Certificate.objects.create(host=hostname, certificate=one.cert_pem, private_key=other.key_pem)
    try:
        code, job = command("front_door", node.name)
        assert code == 1 and job.status == "failed"
        assert "nginx refused the new front door config; the live config is unchanged" in job.error, job.error
        assert "key values mismatch" in job.error or "SSL_CTX_use_PrivateKey" in job.error, job.error
        assert open(site).read() == live
        assert page(host, hostname)["app"] == name
        assert other.key_pem not in json.dumps([e.data for e in job.events.all()])
    finally:
        Certificate.objects.filter(host=hostname).delete()


def curl(*args):
    import subprocess

    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", *args], capture_output=True,
                       text=True, timeout=20)
    return r.returncode, r.stdout, r.stderr


def test_a_host_with_a_certificate_is_served_over_https_and_plain_http_redirects(test_hosts, ready_nodes, tmp_path):
    from tests.tlsca import issue, make_ca

    host, node = test_hosts[1], ready_nodes[1]
    name = f"tls{os.getpid() % 10000}"
    hostname = f"{name}.test"
    assert deploy(pathy(tmp_path, name=name, location=hostname), node)[0] == 0
    ca = make_ca(tmp_path / "ca")
    leaf = issue(ca, [hostname], tmp_path / "leaf", stem="leaf")
    out = io.StringIO()
    call_command("tls", "add", hostname, "--cert", str(leaf.cert_path), "--key", str(leaf.key_path), stdout=out)
    try:
        # Adding it queued a front door job for the node serving the host.
        said = re.search(rf"job (\d+) renders the front door of {node.name}\b", out.getvalue())
        assert said, out.getvalue()
        job = wait_for_job(int(said.group(1)), timeout=60)
        assert job.status == "succeeded", job.error
        assert job.events.filter(kind="front_door", data__https=[hostname]).exists()
        resolve = f"{hostname}:{node.https_port}:{host.address}"
        url = f"https://{hostname}:{node.https_port}/blog/x"
        # curl checks the chain against the test CA and the name against the certificate.
        rc, out, err = curl("--cacert", str(leaf.root_path), "--resolve", resolve, "-D", "-", url)
        assert rc == 0, err
        head, _, body = out.partition("\n\n")  # (text mode: the CRLFs read as newlines)
        assert head.startswith("HTTP/2 200"), out
        assert "strict-transport-security: max-age=63072000" in head.lower()
        seen = json.loads(body)
        assert (seen["app"], seen["path_info"], seen["scheme"]) == (name, "/blog/x", "https")
        rc, out, err = curl("--cacert", str(leaf.root_path), "--resolve", resolve, "--tlsv1.1", "--tls-max", "1.1",
                            url)
        assert rc != 0  # TLS 1.1 and older are refused
        rc, _, err = curl("--resolve", resolve, url)  # without the test CA: not trusted
        assert rc == 60, err
        # Plain HTTP answers with a redirect to the same URL over HTTPS, ACME challenges aside.
        status, headers, _ = request(host, hostname, "/blog/x?q=1")
        assert status == 301 and headers["location"] == f"https://{hostname}:{node.https_port}/blog/x?q=1"
        acme = NodeLayout(host.root).acme_dir
        os.makedirs(os.path.join(acme, ".well-known", "acme-challenge"), exist_ok=True)
        with open(os.path.join(acme, ".well-known", "acme-challenge", "tok3n"), "w") as f:
            f.write("tok3n.thumbprint")
        assert request(host, hostname, "/.well-known/acme-challenge/tok3n")[::2] == (200, b"tok3n.thumbprint")
        # The key is on the node only as a 0600 file, and in no event.
        tls_dir = NodeLayout(host.root).tls_dir
        keys = [f for f in os.listdir(tls_dir) if f.endswith(".key")]
        assert len(keys) == 1 and os.stat(os.path.join(tls_dir, keys[0])).st_mode & 0o777 == 0o600
        assert leaf.key_pem.strip().splitlines()[1] not in json.dumps([e.data for e in job.events.all()])
    finally:
        Certificate.objects.filter(host=hostname).delete()
        command("front_door", node.name)


def test_locations_edited_in_the_admin_or_a_group_document_are_served_without_a_deploy(test_hosts, ready_nodes,
                                                                                      tmp_path):
    from django.contrib.auth.models import User
    from django.test import Client
    from django.urls import reverse

    from toppcloud_site.records.models import ServerGroup

    host, node = test_hosts[0], ready_nodes[0]
    tag = os.getpid() % 10000
    name, alias, documented = f"edited{tag}", f"alias{tag}.test", f"doc{tag}.test"
    assert deploy(pathy(tmp_path, name=name, location=f"{name}.test"), node)[0] == 0
    app = App.objects.get(name=name)
    admin = Client()  # not pytest-django's admin_client: its transaction would hold back the job
    admin.force_login(User.objects.create_superuser(f"{name}-admin", password=None))

    def admin_post(url, data):
        before = timezone.now()
        response = admin.post(url, data, follow=True)
        text = response.content.decode()
        assert response.status_code == 200 and "Front door started" in text, re.findall(r"errorlist.*?<li>(.*?)<", text)
        job = wait_for_job(job_of("front_door", before).pk)
        assert job.status == "succeeded" and job.params["nodes"] == [node.name], job.error
        return job

    assert request(host, alias)[0] == 404
    admin_post(reverse("admin:records_location_add"), {"app": app.pk, "host": alias, "path": "/"})
    assert page(host, alias)["app"] == name
    location = Location.objects.get(host=alias)
    admin_post(reverse("admin:records_location_delete", args=[location.pk]), {"post": "yes"})
    assert request(host, alias) == (404, request(host, alias)[1], b"no app is deployed here\n")
    assert page(host, f"{name}.test")["app"] == name
    url = reverse("admin:records_app_change", args=[app.pk])
    admin_post(url, app_form_adding_a_location(admin.get(url), alias))
    assert page(host, alias)["app"] == name

    group = ServerGroup.objects.create(name=f"docs{tag}")
    App.objects.filter(pk=app.pk).update(group=group)
    out = io.StringIO()
    call_command("export_group", group.name, stdout=out)
    text = out.getvalue().replace(f'"{name}.test/",', f'"{documented}/",\n    "{name}.test/",')
    assert documented in text
    (tmp_path / "group.toml").write_text(text)
    before = timezone.now()
    out = io.StringIO()
    call_command("import_group", str(tmp_path / "group.toml"), stdout=out)
    job = wait_for_job(job_of("front_door", before).pk)
    assert f"locations changed: front_door job {job.pk} renders {node.name}" in out.getvalue().splitlines()
    assert job.status == "succeeded" and page(host, documented)["app"] == name
    App.objects.filter(pk=app.pk).update(group=None)


def app_form_adding_a_location(response, host):
    """The POST of the admin's App page as it was rendered, with one more location (host, /) in its inline."""
    def values(form):
        return {form.add_prefix(name): "" if form[name].value() is None else form[name].value() for name in form.fields}

    data = values(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        formset, management = inline.formset, inline.formset.management_form
        forms = list(formset.forms)
        data.update(values(management))
        for f in forms:
            data.update(values(f))
        if formset.model is Location:
            data[management.add_prefix("TOTAL_FORMS")] = len(forms) + 1
            data.update({f"{formset.prefix}-{len(forms)}-host": host, f"{formset.prefix}-{len(forms)}-path": "/"})
    return data


def deploy_published(app_dir, node, group):
    """Deploy app_dir as an app of group; its static files were published before it went live. (release, job)"""
    from jobs.steps.releases import pack_release

    release, _ = pack_release(app_dir)
    App.objects.filter(name=release.app.name).update(group=group)
    code, job = deploy(app_dir, node)
    assert code == 0, job.error
    kinds = [(e.kind, e.data.get("step")) for e in job.events.order_by("seq")]
    assert kinds.index(("step.finished", "static publish")) < kinds.index(("step.started", "activate"))
    return release, job


def test_a_group_with_a_static_origin_gets_each_release_published_before_it_goes_live(test_hosts, ready_nodes,
                                                                                     tmp_path):
    from toppcloud_site.records.models import ServerGroup

    host, node = test_hosts[0], ready_nodes[0]
    tag = os.getpid() % 10000
    name, hostname = f"cdn{tag}", f"cdn{tag}.test"
    origin = tmp_path / "origin"
    group = ServerGroup(name=f"cdngroup{tag}", static_publish=str(origin),
                        static_publish_url="https://cdn.example.test/static/")
    group.full_clean()
    group.save()
    release, job = deploy_published(pathy(tmp_path, name=name, location=hostname, css="cdn { }\n"), node, group)
    published = origin / name / release.name
    assert (published / "style.css").read_bytes() == b"cdn { }\n"
    seen = page(host, hostname)
    assert seen["static_url"] == f"https://cdn.example.test/static/{name}/{release.name}/"
    assert seen["stylesheet"] == f"https://cdn.example.test/static/{name}/{release.name}/style.css"

    # An origin that cannot be written: the deploy fails before anything goes live.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    group.static_publish = str(blocker)
    group.save()
    code, job = deploy(pathy(tmp_path, name=name, location=hostname, version="2"), node)
    assert code == 1 and "publishing the static files to" in job.error and "nothing went live" in job.error
    assert "release.activated" not in event_kinds(job)
    assert page(host, hostname)["version"] == "1"
    App.objects.filter(name=name).update(group=None)


def test_a_group_with_an_s3_origin_gets_each_release_uploaded_before_it_goes_live(test_hosts, ready_nodes,
                                                                                  tmp_path, s3_server):
    import urllib.error
    import urllib.request

    import boto3
    from django.conf import settings

    from nodeops import publish
    from toppcloud_site.records.models import ServerGroup

    host, node = test_hosts[0], ready_nodes[0]
    tag = os.getpid() % 10000
    name, hostname, bucket = f"s3cdn{tag}", f"s3cdn{tag}.test", f"toppcloud-static-{tag}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name=settings.TOPPCLOUD_S3_REGION,
                      aws_access_key_id=settings.TOPPCLOUD_S3_ACCESS_KEY_ID,
                      aws_secret_access_key=settings.TOPPCLOUD_S3_SECRET_ACCESS_KEY)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    public = f"{s3_server}/{bucket}/cdn"  # anyone may read it, as a CDN in front of it would
    group = ServerGroup(name=f"s3group{tag}", static_publish=f"s3://{bucket}/cdn/", static_publish_url=public)
    group.full_clean()
    group.save()
    app_dir = pathy(tmp_path, name=name, location=hostname, css="s3 { }\n")
    (app_dir / "static" / "js").mkdir()
    (app_dir / "static" / "js" / "app.js").write_bytes(b"console.log('\\u00fc');\n")
    release, job = deploy_published(app_dir, node, group)
    logs = [e.data["text"] for e in job.events.filter(kind="log") if "static publish" in e.data.get("text", "")]
    assert logs == [f"static publish: 2 files uploaded (30 bytes), 0 already there, "
                    f"to s3://{bucket}/cdn/{name}/{release.name}/"], logs
    assert settings.TOPPCLOUD_S3_SECRET_ACCESS_KEY not in json.dumps([e.data for e in job.events.all()])

    for path, body, content_type in (("style.css", b"s3 { }\n", "text/css"),
                                     ("js/app.js", b"console.log('\\u00fc');\n", "text/javascript")):
        with urllib.request.urlopen(f"{public}/{name}/{release.name}/{path}", timeout=10) as response:
            assert response.read() == body
            assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            assert response.headers["Content-Type"] == content_type
    seen = page(host, hostname)
    assert seen["static_url"] == f"{public}/{name}/{release.name}/"
    assert seen["stylesheet"] == f"{public}/{name}/{release.name}/style.css"

    # A retried publish of the same release sends nothing again.
    said = []
    publish.publish(lambda kind, **data: said.append(data), str(app_dir / "static"), group.static_publish, name,
                    release.name, s3={"endpoint_url": s3_server, "region_name": "us-east-1",
                                      "aws_access_key_id": "k", "aws_secret_access_key": "s"})
    assert said == [{"text": f"static publish: 0 files uploaded (0 bytes), 2 already there, "
                             f"to s3://{bucket}/cdn/{name}/{release.name}/"}]

    # A bucket that is not there: the deploy fails before anything goes live, and says why.
    group.static_publish = f"s3://no-such-bucket-{tag}"
    group.save()
    code, job = deploy(pathy(tmp_path, name=name, location=hostname, version="2"), node)
    assert code == 1 and f"publishing the static files to s3://no-such-bucket-{tag}/{name}/" in job.error
    assert "NoSuchBucket" in job.error and "nothing went live" in job.error, job.error
    assert "release.activated" not in event_kinds(job)
    assert page(host, hostname)["version"] == "1"
    App.objects.filter(name=name).update(group=None)


def test_a_static_origin_must_be_a_plain_destination_and_comes_with_its_url(live_db):
    from django.core.exceptions import ValidationError

    from toppcloud_site.records.models import ServerGroup

    for origin, url, words in (("/srv/cdn; rm -rf /", "https://cdn.test/", "static_publish"),
                               ("s3://Not_A_Bucket/cdn", "https://cdn.test/", "an S3 destination is"),
                               ("s3://bucket/a b", "https://cdn.test/", "an S3 destination is"),
                               ("-e sh", "https://cdn.test/", "static_publish"),
                               ("/srv/../etc", "https://cdn.test/", "static_publish"),
                               ("/srv/cdn", "", "set together or not at all"),
                               ("/srv/cdn", "javascript:alert(1)", "static_publish_url")):
        group = ServerGroup(name=f"badcdn{os.getpid() % 10000}", static_publish=origin, static_publish_url=url)
        with pytest.raises(ValidationError) as error:
            group.full_clean()
        assert words in str(error.value), (origin, url, str(error.value))


def test_two_apps_deployed_to_one_node_at_once_are_both_served(test_hosts, ready_nodes, tmp_path):
    """Each render reads what is live under the node's row lock: the second push includes the first app."""
    from jobs.engine import dispatch
    from jobs.steps.releases import pack_release

    host, node = test_hosts[1], ready_nodes[1]
    tag = os.getpid() % 10000
    names = [f"pair{tag}a", f"pair{tag}b"]
    releases = [pack_release(pathy(tmp_path, name=n, location=f"{n}.test"))[0] for n in names]
    jobs = [dispatch.submit("deploy", target=f"app:{r.app.name}", actor_kind="user", actor="tester",
                            params={"app": r.app.name, "release": r.name, "node": node.name}) for r in releases]
    done = [wait_for_job(j.pk, timeout=180) for j in jobs]
    assert [j.status for j in done] == ["succeeded", "succeeded"], [j.error for j in done]
    for name in names:
        assert page(host, f"{name}.test")["app"] == name
    live = open(os.path.join(NodeLayout(host.root).nginx_sites, node_frontdoor.SITE)).read()
    assert all(f"server_name {n}.test;" in live for n in names)


def test_a_bad_location_record_of_one_app_never_blocks_a_deploy_of_another(test_hosts, ready_nodes, tmp_path):
    """Rows written around the rule (raw SQL): that app's block is left out, and the job says so."""
    from django.db import connection

    host, node = test_hosts[1], ready_nodes[1]
    tag = os.getpid() % 10000
    first, second = f"badrec{tag}a", f"badrec{tag}b"
    assert deploy(pathy(tmp_path, name=first, location=f"{first}.test"), node)[0] == 0
    app = App.objects.get(name=first)
    bad = [(f"Loc-Upper{tag}.Test", "/"), (f"bad host{tag}", "/"), (f"x{tag}.test", "/a/../b/")]
    with connection.cursor() as cursor:
        for bad_host, bad_path in bad:
            cursor.execute("INSERT INTO records_location (app_id, host, path) VALUES (%s, %s, %s)",
                           [app.pk, bad_host, bad_path])
    try:
        code, job = deploy(pathy(tmp_path, name=second, location=f"{second}.test"), node)
        assert code == 0 and job.status == "succeeded", job.error
        assert page(host, f"{second}.test")["app"] == second
        assert page(host, f"{first}.test")["app"] == first  # the app with the bad rows keeps its own location
        skipped = [e.data for e in job.events.filter(kind="front_door.skipped").order_by("seq")]
        # Every render says so: the deploy's reconcile renders the front door, and so does its activate.
        assert sorted({(s["app"], s["host"], s["path"]) for s in skipped}) == sorted((first, h, p) for h, p in bad)
        assert len(skipped) == 2 * len(bad)
        reasons = {s["host"]: s["reason"] for s in skipped}
        assert f"is not in its canonical form 'loc-upper{tag}.test'" in reasons[f"Loc-Upper{tag}.Test"]
        assert "must be a host name or an IP address" in reasons[f"bad host{tag}"]
        assert "no '..' segments" in reasons[f"x{tag}.test"]
        live = open(os.path.join(NodeLayout(host.root).nginx_sites, node_frontdoor.SITE)).read()
        assert f"Loc-Upper{tag}" not in live and f"bad host{tag}" not in live
        code, job = command("front_door", node.name)  # a render on its own: the same
        assert code == 0 and job.events.filter(kind="front_door.skipped").count() == len(bad), job.error
    finally:
        Location.objects.filter(app=app, host__in=[h for h, _ in bad]).delete()
