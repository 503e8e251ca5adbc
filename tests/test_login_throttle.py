"""Admin logins are throttled (django-axes): the real admin login view, over the Django test client."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse

pytestmark = pytest.mark.django_db
PASSWORD = "the-right-password-0123"


@pytest.fixture
def operator(settings):
    # A fast hasher: each attempt hashes a password, and 1,000,000 PBKDF2 rounds take seconds on a busy machine.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return User.objects.create_user("operator", password=PASSWORD, is_staff=True)


def log_in(client, password, **extra):
    """POST the admin's login form; (status, logged in)."""
    response = client.post(reverse("admin:login"), {"username": "operator", "password": password,
                                                    "next": reverse("admin:index")}, **extra)
    return response.status_code, "_auth_user_id" in client.session


def test_it_locks_the_login_after_five_wrong_passwords_even_for_the_right_one_until_reset(operator):
    client = Client()
    for _ in range(4):
        assert log_in(client, "wrong") == (200, False)  # the form again, "enter a correct username and password"
    status, _ = log_in(client, "wrong")
    assert status == 429  # the fifth failure locks
    assert log_in(client, PASSWORD) == (429, False)
    assert "Account locked: too many login attempts" in client.post(reverse("admin:login"), {
        "username": "operator", "password": PASSWORD}).content.decode()
    call_command("axes_reset")
    assert log_in(client, PASSWORD) == (302, True)


def test_it_counts_per_username_and_address_and_ignores_a_forged_forwarded_for(operator):
    client = Client()
    for i in range(5):  # a different X-Forwarded-For each time: not believed without a proxy of ours
        log_in(client, "wrong", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")
    assert log_in(client, PASSWORD) == (429, False)
    assert log_in(Client(), PASSWORD, REMOTE_ADDR="192.0.2.7") == (302, True)  # another address is not locked


@override_settings(TOPPCLOUD_PROXY_COUNT=1)
def test_it_takes_the_client_from_the_address_our_proxy_appended(operator):
    client = Client()
    for _ in range(5):  # the client forges an entry; our proxy appends the real one
        log_in(client, "wrong", HTTP_X_FORWARDED_FOR="203.0.113.9, 192.0.2.50")
    assert log_in(client, PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.50") == (429, False)
    assert log_in(client, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.9, 192.0.2.51") == (302, True)


@override_settings(AXES_COOLOFF_TIME=timedelta(seconds=2))
def test_it_lets_the_right_password_in_again_after_the_cool_off(operator):
    import time

    client = Client()
    for _ in range(5):
        log_in(client, "wrong")
    assert log_in(client, PASSWORD) == (429, False)
    time.sleep(2.1)
    assert log_in(client, PASSWORD) == (302, True)
