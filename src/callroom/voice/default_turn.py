"""The default `on_turn`: the agent's LLM with its `instructions`, history and `@tool`s."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from callroom.tools import call_tool, tools_of
from callroom.voice.llm_turn import run_llm_turn

if TYPE_CHECKING:
    from callroom.voice.agent import VoiceAgent
    from callroom.voice.pipeline import TurnContext


async def default_on_turn(
    agent: VoiceAgent, transcript: str, ctx: TurnContext
) -> AsyncIterator[str]:
    """Stream the LLM's answer; tool calls and results are recorded into history as they
    happen (the pipeline records the spoken text itself, cut to what was heard)."""
    llm = agent.get_llm()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": agent.system_prompt()},
        *ctx.messages,
        {"role": "user", "content": transcript},
    ]
    return run_llm_turn(
        llm,
        messages,
        tools_of(agent),
        functools.partial(call_tool, agent),
        max_rounds=agent.max_tool_rounds,
        tool_timeout=agent.tool_timeout,
        filler=ctx.speak_filler,
        filler_after_s=agent.filler_after_s,
        record=ctx.record,
    )
