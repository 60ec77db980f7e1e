"""Telephony transports for voice agents: phone calls become ordinary `VoiceAgent` calls."""

from callroom.telephony.twilio import (
    TwilioConnection,
    TwilioSettings,
    build_hangup_request,
    twilio_routes,
)

__all__ = ["TwilioConnection", "TwilioSettings", "build_hangup_request", "twilio_routes"]
