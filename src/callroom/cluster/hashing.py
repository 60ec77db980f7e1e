"""Which host owns an agent: rendezvous (highest-random-weight) hashing over the live hosts.

Every gateway and host computes the same owner from the same membership without asking
anyone; when a host leaves, only its own agents move (each to its next-ranked host), and when
it comes back they move back. Stable across processes and Python versions (BLAKE2b, not
`hash()`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(host_id: str, agent: str, name: str) -> int:
    data = f"{host_id}\x00{agent}\x00{name}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def ranking(host_ids: Iterable[str], agent: str, name: str) -> list[str]:
    """Hosts from most to least preferred for agent (`agent` = kebab class segment)."""
    return sorted(host_ids, key=lambda h: (score(h, agent, name), h), reverse=True)


def owner(host_ids: Iterable[str], agent: str, name: str) -> str | None:
    """The owning host, or None when there is no host."""
    best: tuple[int, str] | None = None
    for h in host_ids:
        key = (score(h, agent, name), h)
        if best is None or key > best:
            best = key
    return None if best is None else best[1]
