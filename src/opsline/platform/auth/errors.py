"""Authentication errors."""

from opsline.platform.http.problems import Conflict, Unauthorized, Unprocessable


class InvalidCredentials(Unauthorized):
    type_slug = "invalid-credentials"
    title = "Invalid credentials"


class EmailTaken(Conflict):
    type_slug = "email-taken"
    title = "Email already registered"


class TenantChoiceRequired(Unprocessable):
    type_slug = "tenant-required"
    title = "Choose a tenant"
