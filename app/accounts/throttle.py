"""Failed logins per account: after LOGIN_FAILURES_PER_ACCOUNT within LOGIN_FAILURE_WINDOW_SECONDS,
the account's password is not checked until the oldest of them has left the window.

Counted per username whatever address the attempts come from (nginx bounds the attempts of each
address), in the database so that every HTTP host sees every host's failures. Both login doors
pass here: the site's form answers 429 with Retry-After (`accounts.views.LoginView`); the admin's,
which only calls the authentication backend, refuses as for a wrong password. A failure while
the account is refused is not recorded, so a guesser gets at most LOGIN_FAILURES_PER_ACCOUNT
passwords per window however long it keeps trying, and the owner gets back in at the same pace.
"""

from __future__ import annotations

import math
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_login_failed
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver
from django.utils import timezone

from accounts.models import LoginFailure
from ops.metrics import LOGINS_REFUSED

USERNAME_LENGTH = LoginFailure._meta.get_field("username").max_length


def _key(username: object) -> str:
    return str(username or "")[:USERNAME_LENGTH]


def _window() -> timedelta:
    return timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS)


def retry_after(username: object) -> int:
    """0 when the account may try a password now, else the whole seconds until it may."""
    now, limit = timezone.now(), settings.LOGIN_FAILURES_PER_ACCOUNT
    recent = list(
        LoginFailure.objects.filter(username=_key(username), at__gt=now - _window())
        .order_by("-at")
        .values_list("at", flat=True)[:limit]
    )
    if len(recent) < limit:
        return 0
    return max(1, math.ceil((recent[-1] + _window() - now).total_seconds()))


def refused(username: object) -> int:
    """retry_after, counting a refusal in the metrics."""
    wait = retry_after(username)
    if wait:
        LOGINS_REFUSED.labels("account_throttled").inc()
    return wait


@receiver(user_login_failed)
def record_failure(sender, credentials: dict, request=None, **kwargs) -> None:
    username = _key(credentials.get(get_user_model().USERNAME_FIELD))
    if retry_after(username):
        return
    now = timezone.now()
    LoginFailure.objects.create(username=username, at=now)
    # Only the last window's failures are of any use.
    LoginFailure.objects.filter(at__lte=now - _window()).delete()


class LoginThrottle:
    """First of AUTHENTICATION_BACKENDS: a throttled account is refused before any backend checks its
    password (PermissionDenied ends Django's authenticate); any other login passes on to the next.

    A guard, not a replacement of ModelBackend: sessions name the backend that logged them in,
    and a session naming one no longer listed would be logged out. Without get_user it is never
    the backend a session names (Django picks the first backend that has one).
    """

    def authenticate(self, request, username=None, **credentials):
        if refused(username if username is not None else credentials.get(get_user_model().USERNAME_FIELD)):
            raise PermissionDenied
        return None
