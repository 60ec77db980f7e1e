"""Agent storage backends. The embedded default is one SQLite file per agent."""

from callroom.storage.sqlite import AgentStorage, HostIndex, agent_db_path

__all__ = ["AgentStorage", "HostIndex", "agent_db_path"]
