"""Scale-out: many host processes (each an AgentHost with many agents) behind gateways.

* `hashing` — rendezvous hashing: (class, name) → owning host, computed by anyone.
* `membership` — hosts register and heartbeat in the shared Postgres store.
* `node` — a host's cluster duties (registration, alarm ownership, handing agents over).
* `gateway` — the Starlette app proxying WebSocket/HTTP connections to the owner.
* `run` — start a host or a gateway as a plain process; `ray` — host actors on Ray.
"""

from callroom.cluster.hashing import owner, ranking

__all__ = ["owner", "ranking"]
