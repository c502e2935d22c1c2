from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie


@ensure_csrf_cookie
def home(request: HttpRequest) -> HttpResponse:
    """The browser client: notifications, order lookup and the live dashboard."""
    orders = request.user.orders.all()[:10] if request.user.is_authenticated else []
    return render(request, "realtime/home.html", {"orders": orders})
