from django.db import models


class LoginFailure(models.Model):
    """One failed login for a username (existing or not), kept for LOGIN_FAILURE_WINDOW_SECONDS.

    In the database because every HTTP host must see every host's failures.
    """

    username = models.CharField(max_length=150)
    at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["username", "at"]), models.Index(fields=["at"])]

    def __str__(self) -> str:
        return f"{self.username} at {self.at:%Y-%m-%d %H:%M:%S}"
