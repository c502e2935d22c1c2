import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from testing import RedisServer, redis_settings, session_headers, url_spec


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("sam", password="pw-sam-123", is_staff=True)


@pytest.fixture
async def auth_headers(user):
    return await sync_to_async(session_headers)(user)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_layer(redis_server, settings):
    """The channel layer and the app's Redis clients on the real redis-server."""
    redis_server.cli("FLUSHALL")
    for name, value in redis_settings(url_spec(redis_server.url)).items():
        setattr(settings, name, value)
    yield redis_server
    get_channel_layer()  # the manager re-creates the layer from settings on change


@pytest.fixture(autouse=True)
def _fresh_local_slots():
    """The in-process connection-limit table must not carry sockets between tests."""
    from realtime import limits

    limits._local.slots.clear()
