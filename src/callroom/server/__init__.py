"""ASGI server: routes, WebSocket sessions, auth hook."""

from callroom.server.app import create_app

__all__ = ["create_app"]
