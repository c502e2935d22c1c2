"""Failed logins per account: refused past the limit whatever the door, for that account only, for the window."""

from datetime import timedelta

import pytest
from django.test import Client

from accounts.models import LoginFailure
from ops.metrics import LOGINS_REFUSED

pytestmark = pytest.mark.django_db

LIMIT, WINDOW = 3, 600


@pytest.fixture(autouse=True)
def limits(settings):
    settings.LOGIN_FAILURES_PER_ACCOUNT = LIMIT
    settings.LOGIN_FAILURE_WINDOW_SECONDS = WINDOW


def log_in(client: Client, username: str, password: str, path: str = "/accounts/login/"):
    return client.post(path, {"username": username, "password": password})


def refusals() -> float:
    return LOGINS_REFUSED.labels("account_throttled")._value.get()


def test_an_account_past_its_failures_is_refused_429_even_with_its_password(client, user):
    for _ in range(LIMIT):
        assert log_in(client, "alice", "wrong").status_code == 200  # the form again, with its error
    before = refusals()
    answer = log_in(client, "alice", "pw-alice-123")
    assert answer.status_code == 429
    assert WINDOW - 5 <= int(answer["Retry-After"]) <= WINDOW
    assert "Too many failed logins for this account: try again in 10 minutes." in answer.content.decode()
    assert "_auth_user_id" not in client.session
    assert refusals() == before + 1


def test_other_accounts_log_in_meanwhile(client, user, other_user):
    for _ in range(LIMIT):
        log_in(client, "alice", "wrong")
    assert log_in(Client(), "bob", "pw-bob-123").status_code == 302


def test_the_admin_login_refuses_a_throttled_account_too(client, staff):
    staff.is_superuser = True
    staff.save()
    for _ in range(LIMIT):
        log_in(client, "sam", "wrong", "/admin/login/")
    answer = log_in(client, "sam", "pw-sam-123", "/admin/login/")
    assert answer.status_code == 200  # the admin's form again: refused as a wrong password
    assert "_auth_user_id" not in client.session
    assert log_in(client, "sam", "pw-sam-123").status_code == 429  # and the site's door says why


def test_an_unknown_username_is_throttled_like_a_real_one(client, user):
    """The answers do not tell which accounts exist."""
    for name in ("alice", "nobody"):
        for _ in range(LIMIT):
            assert log_in(client, name, "wrong").status_code == 200
        assert log_in(client, name, "wrong").status_code == 429


def test_refused_attempts_are_not_recorded_and_the_account_opens_as_failures_age_out(client, user):
    for _ in range(LIMIT):
        log_in(client, "alice", "wrong")
    for _ in range(5):
        assert log_in(client, "alice", "guess").status_code == 429
    assert LoginFailure.objects.filter(username="alice").count() == LIMIT
    # The oldest failure leaves the window: one more guess, then refused again.
    oldest = LoginFailure.objects.filter(username="alice").order_by("at").first()
    oldest.at -= timedelta(seconds=WINDOW)
    oldest.save()
    assert log_in(client, "alice", "wrong").status_code == 200
    assert log_in(client, "alice", "pw-alice-123").status_code == 429
    # Out of the window entirely: the owner's password works.
    LoginFailure.objects.update(at=LoginFailure.objects.order_by("at").first().at - timedelta(seconds=WINDOW))
    assert log_in(client, "alice", "pw-alice-123").status_code == 302


def test_only_the_last_window_of_failures_is_kept(client, user):
    for _ in range(LIMIT):
        log_in(client, "alice", "wrong")
    LoginFailure.objects.update(at=LoginFailure.objects.first().at - timedelta(seconds=WINDOW + 1))
    log_in(client, "nobody", "wrong")
    assert list(LoginFailure.objects.values_list("username", flat=True)) == ["nobody"]


def test_sessions_keep_naming_djangos_backend(client, user, settings):
    """Sessions name the backend that logged them in (those from before the throttle name ModelBackend):
    it stays listed, and the throttle, a guard without get_user, is never the one named."""
    client.force_login(user)
    assert client.session["_auth_user_backend"] == "django.contrib.auth.backends.ModelBackend"
    assert client.get("/").context["user"] == user
    assert log_in(Client(), "alice", "pw-alice-123").status_code == 302
