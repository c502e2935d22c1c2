from django.contrib.auth import views as auth_views

from accounts import throttle


class LoginView(auth_views.LoginView):
    """Django's login form; a throttled account is answered 429 with Retry-After, its password unchecked."""

    def post(self, request, *args, **kwargs):
        username = request.POST.get("username", "")
        wait = throttle.refused(username)
        if not wait:
            return super().post(request, *args, **kwargs)
        # A fresh form: validating the posted one would try the password.
        form = self.get_form_class()(request, initial={"username": username[: throttle.USERNAME_LENGTH]})
        context = self.get_context_data(form=form, retry_minutes=-(-wait // 60))
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(wait)
        return response
