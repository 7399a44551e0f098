"""Model pools and routing by feature: the interactive and batch fleets of a large deployment,
on whatever engines an operator runs.

A pool is a text backend with a concurrency budget (``routing.pools``); each feature is routed
to one (``routing.features``, the rest to ``routing.default_pool``). A pool over budget refuses
with ``Busy`` (429) for its own features only, so a burst of catch-ups never delays a chat. Pools
that name the same backend share one instance (one local model), split by their budgets.

Work with no feature of its own (a red-team sweep calling the app's endpoints) is routed with
``routed_as``: generation inside it counts as that feature, whatever endpoint it went through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from townsquare.admission import Admission
from townsquare.backends.base import TextBackend
from townsquare.settings import RoutingSettings, TextSettings

_ROUTED_AS: ContextVar[str | None] = ContextVar("townsquare_routed_as", default=None)


@contextmanager
def routed_as(feature: str) -> Iterator[None]:
    """Route every generation in this context (this task and what it awaits) as ``feature``."""
    token = _ROUTED_AS.set(feature)
    try:
        yield
    finally:
        _ROUTED_AS.reset(token)


@dataclass
class Pool:
    """A backend and the admission that keeps within the pool's budget."""

    name: str
    backend: TextBackend
    admission: Admission


class Pools:
    """The pools by name and the feature routes."""

    def __init__(self, pools: dict[str, Pool], features: dict[str, str], default: str) -> None:
        self.pools, self.features, self.default = pools, features, default

    def route(self, feature: str) -> str:
        """The pool name for ``feature`` (or for the ``routed_as`` feature of this context)."""
        return self.features.get(_ROUTED_AS.get() or feature, self.default)

    def for_feature(self, feature: str) -> Pool:
        """The pool ``feature`` runs on."""
        return self.pools[self.route(feature)]

    def backends(self) -> list[TextBackend]:
        """Each distinct backend once."""
        seen: dict[int, TextBackend] = {}
        for pool in self.pools.values():
            seen.setdefault(id(pool.backend), pool.backend)
        return list(seen.values())


def build_pools(
    routing: RoutingSettings,
    text: TextSettings,
    default_backend: TextBackend,
    build: Callable[[TextSettings], TextBackend],
    *,
    on_busy: Callable[[str], None] | None = None,
) -> tuple[Pools, list[TextBackend]]:
    """The pools of ``routing``; a pool without a backend of its own, or naming
    ``text.backend``, uses ``default_backend``. Returns the pools and the backends built here
    (the caller closes them)."""
    built: dict[str, TextBackend] = {text.backend: default_backend}
    made: list[TextBackend] = []
    pools: dict[str, Pool] = {}
    for name, pool in routing.pools.items():
        spec = pool.backend or text.backend
        if spec not in built:
            built[spec] = build(text.model_copy(update={"backend": spec}))
            made.append(built[spec])
        pools[name] = Pool(
            name,
            built[spec],
            Admission(
                f"The '{name}' model pool",
                capacity=pool.concurrency,
                retry_after_s=pool.retry_after_s,
                setting=f"routing.pools.{name}.concurrency",
                on_busy=_bind(on_busy, name),
            ),
        )
    return Pools(pools, routing.features, routing.default_pool), made


def _bind(callback: Callable[[str], None] | None, name: str) -> Callable[[], None] | None:
    return None if callback is None else lambda: callback(name)
