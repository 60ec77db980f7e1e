"""A toy dental-clinic CRM that the receptionist demo calls over HTTP.

It lives outside the `callroom` package on purpose: the voice agent has to reach it the way it
would reach a real practice-management system, with a URL and a bearer token, so the demo
exercises real tool calls rather than in-process shortcuts.
"""
