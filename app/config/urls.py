from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path

from accounts.views import LoginView
from notifications.views import notifications_api
from ops import views as ops_views
from realtime.views import home

urlpatterns = [
    path("", home, name="home"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/notifications/", notifications_api, name="notifications-api"),
    path("api/aggregate/", ops_views.aggregate, name="aggregate"),
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("metrics", ops_views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
]

if settings.DEBUG:
    # Development only (daphne or gunicorn started by hand); nginx serves /static/ in production.
    urlpatterns += staticfiles_urlpatterns()
