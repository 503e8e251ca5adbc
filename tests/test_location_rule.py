"""The one rule for a location (nodeops.validate.validate_location), wherever a location is saved or rendered.

Property: every host and path is refused at save with a ValidationError naming the field, or saved in its
canonical form (lower-case host, no trailing dot) and rendered by the front door, and nginx -t accepts
everything saved. The admin forms, group documents and the data migration apply the same rule.
"""

import importlib
import subprocess

import pytest
from django.apps import apps as django_apps
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.urls import reverse
from hypothesis import HealthCheck, given, settings, strategies as st

from nodeops import frontdoor, validate
from nodeops.layout import NodeLayout
from toppcloud_site.records import documents
from toppcloud_site.records.models import App, Location, ServerGroup

pytestmark = pytest.mark.django_db
RELEASE = "20260101000000-0123abcd"

_label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
_names = st.lists(_label, min_size=1, max_size=4).map(".".join)
HOSTS = st.one_of(
    _names,  # upper and lower case
    _names.map(lambda n: "*." + n),
    _names.map(lambda n: n + "."),  # a trailing dot
    _names.map(lambda n: n + ":8080"),  # a port
    st.ip_addresses().map(str),
    st.ip_addresses().map(lambda ip: f"*.{ip}"),
    st.text(alphabet="Aa0-.*:_ \0\u212a\u0130", max_size=20),  # separators, NUL, the Kelvin sign, dotted I
    st.text(max_size=20),  # any unicode, lone surrogates included
    st.sampled_from(["*", "Loc-Upper.Test", "xn--bcher-kva.example", "bücher.example", "\ud800.test",
                     "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, "*." + "e" * 63 + ".test"]),
)
PATHS = st.one_of(
    st.just("/"),
    st.from_regex(r"/([A-Za-z0-9._~-]{1,8}/){1,3}", fullmatch=True),
    st.text(alphabet="/aZ.~_-\0 \n%é", max_size=16),
    st.text(max_size=12),
    st.sampled_from(["/blog/\n", "/a/../b/", "/" + "p/" * 100]),
)


@pytest.fixture
def app():
    return App.objects.create(name="ruled")


def test_it_saves_every_location_canonical_or_refuses_it_and_nginx_takes_all_it_saved(app, tmp_path):
    saved, refused = {}, []

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(host=HOSTS, path=PATHS)
    def each(host, path):
        with transaction.atomic():
            location = Location(app=app, host=host, path=path)
            try:
                location.full_clean()
            except ValidationError as exc:
                assert set(exc.message_dict) <= {"host", "path"}, exc.message_dict
                assert all(msg.strip() for msgs in exc.message_dict.values() for msg in msgs)
                with pytest.raises(ValidationError):  # save() applies the same rule, whoever calls it
                    Location(app=app, host=host, path=path).save()
                refused.append((host, path))
                return
            location.save()
            stored = Location.objects.get(pk=location.pk)
            assert (stored.host, stored.path) == validate.validate_location(host, path)
            assert validate.validate_location(stored.host, stored.path) == (stored.host, stored.path)  # idempotent
            assert stored.host == stored.host.lower() and not stored.host.endswith(".")
            route = frontdoor.Route(app=app.name, host=stored.host, path=stored.path, port=8000, release=RELEASE)
            frontdoor.render(NodeLayout("/srv/tc"), [route], listen="127.0.0.1:8080")  # never refused
            saved[(stored.host, stored.path)] = route
            transaction.set_rollback(True)

    each()
    assert len(saved) > 40 and len(refused) > 40, (len(saved), len(refused))
    # Everything that can be saved, in one config: nginx accepts it (a server block per host).
    routes, skipped = frontdoor.select(saved.values())
    assert skipped == [] or all("would be both" in why for _, why in skipped), skipped[:3]
    assert nginx_accepts(tmp_path, frontdoor.render(NodeLayout(str(tmp_path)), routes, listen="127.0.0.1:8080"))


def nginx_accepts(tmp_path, sites_text):
    (tmp_path / "site.conf").write_text(sites_text)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    include {tmp_path}/site.conf;\n}}\n")
    r = subprocess.run(["/usr/sbin/nginx", "-t", "-q", "-e", f"{tmp_path}/error.log", "-c", f"{tmp_path}/nginx.conf"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return True


def test_it_leaves_out_a_route_the_rule_refuses_and_renders_the_others():
    good = frontdoor.Route(app="good", host="good.test", path="/", port=8001, release=RELEASE)
    upper = frontdoor.Route(app="upper", host="Loc-Upper.Test", path="/", port=8002, release=RELEASE)
    clash = frontdoor.Route(app="clash", host="good.test", path="/", port=8003, release=RELEASE)
    routes, skipped = frontdoor.select([good, upper, clash])
    assert routes == [good]
    assert [(r.app, why) for r, why in skipped] == [
        ("upper", "host 'Loc-Upper.Test' is not in its canonical form 'loc-upper.test'"),
        ("clash", "two apps at good.test/: good and clash")]
    text = frontdoor.render(NodeLayout("/srv/tc"), routes, listen="127.0.0.1:8080")
    assert "server_name good.test;" in text and "Loc-Upper" not in text and "8003" not in text


def test_it_saves_an_upper_case_host_from_the_admin_lower_case(app, admin_client):
    response = admin_client.post(reverse("admin:records_location_add"),
                                 {"app": app.pk, "host": "Loc-Upper.Test.", "path": "/"})
    assert response.status_code == 302
    assert list(Location.objects.filter(app=app).values_list("host", flat=True)) == ["loc-upper.test"]
    # The same host spelled otherwise is the same location: refused as taken, never a second row.
    page = admin_client.post(reverse("admin:records_location_add"),
                             {"app": app.pk, "host": "LOC-upper.test", "path": "/"}).content.decode()
    assert "Location with this Host and Path already exists" in page
    page = admin_client.post(reverse("admin:records_location_add"),
                             {"app": app.pk, "host": "bücher.example", "path": "/"}).content.decode()
    assert "give an internationalized name in its IDNA form (xn--...)" in page
    assert Location.objects.filter(app=app).count() == 1


def test_it_refuses_two_spellings_of_one_host_in_the_app_pages_inline(app, admin_client):
    url = reverse("admin:records_app_change", args=[app.pk])
    data = {"name": app.name, "description": "", "group": "",
            "locations-TOTAL_FORMS": "2", "locations-INITIAL_FORMS": "0",
            "locations-MIN_NUM_FORMS": "0", "locations-MAX_NUM_FORMS": "1000",
            "locations-0-host": "Two.Test", "locations-0-path": "/",
            "locations-1-host": "two.test", "locations-1-path": "/"}
    for inline in admin_client.get(url).context["inline_admin_formsets"]:
        management = inline.formset.management_form
        if inline.formset.model is not Location:
            data.update({management.add_prefix(k): v for k, v in management.initial.items()})
    response = admin_client.post(url, data)
    assert response.status_code == 200, response.status_code  # the form again, with the error; no 500
    assert "Please correct the duplicate data for host and path" in response.content.decode()
    assert not Location.objects.filter(app=app).exists()


def test_it_reads_a_group_documents_locations_by_the_same_rule(app):
    group = ServerGroup.objects.create(name="ruled")
    App.objects.filter(pk=app.pk).update(group=group)
    doc = documents.parse(b'[group]\nname = "ruled"\n[apps.ruled]\nlocations = ["Loc-Upper.Test./Blog/"]\n')
    documents.apply(doc)
    assert list(Location.objects.filter(app=app).values_list("host", "path")) == [("loc-upper.test", "/Blog/")]
    assert documents.plan(doc)[0] == []  # already matches: the records are canonical
    for bad, words in (("bad host/", "it must be a host name or an IP address"),
                       ("b\u00fccher.example/", "IDNA form"), ("x.test/a/../", "no '..' segments")):
        with pytest.raises(documents.DocumentError, match=words):
            documents.parse(f'[group]\nname = "ruled"\n[apps.ruled]\nlocations = ["{bad}"]\n'.encode())


def test_the_migration_makes_saved_rows_canonical_and_leaves_the_rest(app):
    other = App.objects.create(name="other")
    with connection.cursor() as cursor:  # rows saved before the rule, written around save()
        for owner, host in ((app, "Loc-Upper.Test"), (app, "Taken.test"), (other, "taken.test"),
                            (other, "bad host")):
            cursor.execute("INSERT INTO records_location (app_id, host, path) VALUES (%s, %s, '/')", [owner.pk, host])
    migration = importlib.import_module("toppcloud_site.records.migrations.0014_location_canonical")
    migration.canonical_locations(django_apps, None)
    mine = Location.objects.filter(app__in=[app, other])  # other tests' committed rows are there too
    assert sorted(mine.values_list("host", flat=True)) == ["Taken.test", "bad host", "loc-upper.test", "taken.test"]

