"""The HTTP application: routers of the platform and every capability, assembled."""

from opsline.api.app import create_app

__all__ = ["create_app"]
