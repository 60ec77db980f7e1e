"""Settings from `CALLROOM_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide settings. Every field is documented in the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="CALLROOM_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where agent SQLite files live.")
    idle_seconds: float = Field(60.0, gt=0, description="Idle time before an agent hibernates.")
    max_message_bytes: int = Field(
        1_048_576, gt=0, description="Largest inbound WebSocket message accepted."
    )
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="Drain bound on SIGTERM.")
    rpc_timeout_seconds: float = Field(30.0, gt=0, description="Bound on one RPC handler.")
    max_send_queue: int = Field(
        512, gt=0, description="Outbound frames buffered per connection before it is closed."
    )
    max_calls: int = Field(200, gt=0, description="Concurrent voice calls per process.")
    ws_compression: bool = Field(
        False, description="permessage-deflate: ~30 µs CPU per frame and ~46 KB per socket"
    )
    log_level: str = Field("INFO")
