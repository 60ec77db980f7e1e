"""callroom: durable, stateful AI agents with a real-time voice pipeline."""

from callroom.agent import Agent, Schedule
from callroom.config import Settings
from callroom.connection import Connection
from callroom.rpc import callable
from callroom.server.app import create_app

__all__ = ["Agent", "Connection", "Schedule", "Settings", "callable", "create_app"]
