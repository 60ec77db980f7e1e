"""callroom: durable, stateful AI agents with a real-time voice pipeline."""

from callroom.agent import Agent, Schedule
from callroom.config import Settings
from callroom.connection import Connection
from callroom.rpc import callable
from callroom.server.app import create_app

__all__ = [
    "Agent", "Connection", "Schedule", "Settings", "VoiceAgent", "callable", "create_app", "tool",
]


def __getattr__(name: str) -> object:
    """`VoiceAgent` and `tool` load on first use, so a plain `Agent` app stays light."""
    if name == "VoiceAgent":
        from callroom.voice.agent import VoiceAgent

        return VoiceAgent
    if name == "tool":
        from callroom.tools import tool

        return tool
    raise AttributeError(f"module 'callroom' has no attribute {name!r}")
