from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from notifications.services import send_notification


class Command(BaseCommand):
    help = "Send a live notification to every open socket of a user."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("message")

    def handle(self, *args, username: str, message: str, **options) -> None:
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        send_notification(user.pk, message)
        self.stdout.write(f"queued for {username} (user {user.pk})")
