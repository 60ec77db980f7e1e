"""Class-name ↔ URL-segment mapping and agent-name validation.

Kebab-casing must match the npm client's `camelCaseToKebabCase` exactly, because the client
computes the URL segment itself; a mismatch is a 404 the user cannot explain.
"""

from __future__ import annotations

import re

from callroom.errors import BadAgentName

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def camel_to_kebab(name: str) -> str:
    """Mirror of `camelCaseToKebabCase` in the `agents` package (dist/utils.js)."""
    if name == name.upper() and name != name.lower():
        return name.lower().replace("_", "-")
    out = re.sub(r"[A-Z]", lambda m: "-" + m.group(0).lower(), name)
    out = out[1:] if out.startswith("-") else out
    out = out.replace("_", "-")
    return out[:-1] if out.endswith("-") else out


def validate_agent_name(name: str) -> str:
    """Return `name` if it is safe to use as a file name; raise `BadAgentName` otherwise.

    The rule is an allow-list (ASCII letters, digits, `.`, `_`, `-`; 1–128 chars; no leading
    dot), so traversal (`..`, `/`), control characters and unicode look-alikes never pass.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.startswith("."):
        raise BadAgentName(
            "agent name must be 1-128 characters of [A-Za-z0-9._-] and must not start with '.'"
        )
    return name
