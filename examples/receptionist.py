"""The demo: a dental-clinic receptionist that answers the phone and works the clinic's CRM.

Run it with `make demo`, which also starts the CRM (`examples/crm/`). The receptionist looks
up, books and cancels appointments through the CRM's HTTP API with a bearer token that never
appears in logs, history or tool results.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import httpx

from callroom import callable
from callroom.tools import tool
from callroom.voice.agent import VoiceAgent

CRM_URL = os.environ.get("CRM_URL", "http://127.0.0.1:8790")


class CRMError(Exception):
    """The CRM said no; the message is a sentence the agent can read out."""


class CRM:
    """A tiny client for the clinic CRM (one pooled connection per process)."""

    def __init__(self, base_url: str, token: str) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(5.0, connect=2.0),
        )

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CRMError("The clinic system is not reachable right now.") from exc
        data: dict[str, Any] = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            raise CRMError(str(data.get("message") or f"CRM error {resp.status_code}"))
        return data


_crm: CRM | None = None


def crm() -> CRM:
    global _crm
    if _crm is None:
        _crm = CRM(CRM_URL, os.environ.get("CRM_TOKEN", "demo-crm-token"))
    return _crm


class Receptionist(VoiceAgent):
    """`/agents/receptionist/<call id>`: one agent per phone call."""

    greeting = "Bright Smile Dental, this is the front desk. How can I help you today?"

    def system_prompt(self) -> str:
        today = dt.date.today()
        return (
            "You are the receptionist of Bright Smile Dental, speaking on the phone. "
            "Answer in one or two short sentences, no lists, no markdown. "
            f"Today is {today:%A, %B %d, %Y}. "
            "The clinic is open Monday to Friday, 9 am to 5 pm. "
            "If you don't know something, say so. "
            "Use the tools to look up, book or cancel appointments; never invent dates. "
            "If you need the caller's patient ID, ask for it."
        )

    @tool
    async def next_appointment(self, patient_id: str) -> dict[str, Any]:
        """Look up the caller's next booked appointment.

        Args:
            patient_id: the patient's ID number, digits only, e.g. "4567".
        """
        try:
            return await crm().request("GET", f"/patients/{_digits(patient_id)}/next-appointment")
        except CRMError as exc:
            return {"error": str(exc)}

    @tool
    async def free_slots(self, date: dt.date) -> dict[str, Any]:
        """List free appointment times on a date (YYYY-MM-DD)."""
        try:
            return await crm().request("GET", "/slots", params={"date": date.isoformat()})
        except CRMError as exc:
            return {"error": str(exc)}

    @tool
    async def book_appointment(
        self, patient_id: str, date: dt.date, time: str, reason: str = "check-up"
    ) -> dict[str, Any]:
        """Book an appointment.

        Args:
            patient_id: the patient's ID number, digits only.
            date: the day, YYYY-MM-DD.
            time: the start time, HH:MM (24 h), on the hour or half hour.
            reason: why the patient is coming.
        """
        body = {"patient_id": _digits(patient_id), "date": date.isoformat(), "time": time,
                "reason": reason}
        try:
            return await crm().request("POST", "/appointments", json=body)
        except CRMError as exc:
            return {"error": str(exc)}

    @tool
    async def cancel_appointment(self, appointment_id: str) -> dict[str, Any]:
        """Cancel an appointment by its appointment ID (from next_appointment)."""
        try:
            return await crm().request("POST", f"/appointments/{_digits(appointment_id)}/cancel")
        except CRMError as exc:
            return {"error": str(exc)}

    @callable
    def transcript(self) -> list[dict[str, Any]]:
        """The conversation so far (for the playground and tests)."""
        return self.get_conversation_history()


def _digits(value: str) -> str:
    """IDs go into URL paths: keep digits only, so nothing else can reach the CRM's router."""
    return "".join(ch for ch in str(value) if ch.isdigit()) or "0"
