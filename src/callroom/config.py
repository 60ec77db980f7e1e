"""Settings from `CALLROOM_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide settings. Every field is documented in the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="CALLROOM_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where agent SQLite files live.")
    storage: str = Field(
        "",
        description="Storage URL: empty/`sqlite:///DIR` (one SQLite file per agent) or "
        "`postgresql://user:pass@host/db` (shared store for a cluster).",
    )
    idle_seconds: float = Field(60.0, gt=0, description="Idle time before an agent hibernates.")
    max_message_bytes: int = Field(
        1_048_576, gt=0, description="Largest inbound WebSocket message accepted."
    )
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="Drain bound on SIGTERM.")
    rpc_timeout_seconds: float = Field(30.0, gt=0, description="Bound on one RPC handler.")
    max_send_queue: int = Field(
        512, gt=0, description="Outbound frames buffered per connection before it is closed."
    )
    max_send_queue_bytes: int = Field(
        16 * 1024 * 1024, gt=0,
        description="Outbound bytes buffered per connection before it is closed (1013).",
    )
    max_messages_per_second: float = Field(
        1000.0, ge=0,
        description="Inbound frames per second per connection (token bucket; 0 = no limit). "
        "Excess: an error frame, then close 1008.",
    )
    message_burst: int = Field(
        0, ge=0, description="Frames a connection may send at once above the rate (0 = 2 s' worth)."
    )
    max_calls: int = Field(200, gt=0, description="Concurrent voice calls per process.")
    ws_compression: bool = Field(
        False, description="permessage-deflate: ~30 µs CPU per frame and ~46 KB per socket"
    )
    log_level: str = Field("INFO")
