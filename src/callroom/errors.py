"""One exception hierarchy. Errors that reach a client carry a stable `code` and a sentence."""

from __future__ import annotations


class CallroomError(Exception):
    """Base of every error callroom raises on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadAgentName(CallroomError):
    code = "bad_agent_name"


class UnknownAgentClass(CallroomError):
    code = "unknown_agent"


class ProtocolError(CallroomError):
    """A client sent something that does not fit the protocol (shape, size, type)."""

    code = "protocol_error"


class RpcError(CallroomError):
    code = "rpc_error"


class StateRejected(CallroomError):
    code = "state_rejected"


class ScheduleError(CallroomError):
    code = "schedule_error"


class MissingExtra(CallroomError):
    """An optional dependency is not installed; the message names the extra to install."""

    code = "missing_extra"

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is not installed: pip install 'callroom[{extra}]'")


class ProviderError(CallroomError):
    """A speech or language provider failed (timeout, bad answer, unreachable)."""

    code = "provider_error"
    stage: str | None = None
    """Pipeline stage that failed, when known: stt, llm, tts, turn."""

    def __init__(self, message: str, *, code: str | None = None, stage: str | None = None) -> None:
        super().__init__(message, code=code)
        if stage is not None:
            self.stage = stage


class ProviderTimeout(ProviderError):
    """A provider gave no answer within its stage's bound (`stage`: stt, llm, tts, turn)."""

    code = "provider_timeout"

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message, stage=stage)
