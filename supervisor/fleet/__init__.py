"""Fleet dispatch: many tasks through a bounded queue, within a concurrency cap and the
machine's memory, with policies (retry, circuit breaker, degradation, pressure).

``supervisor`` is the loop (:class:`Supervisor`); it drives an engine through the
Protocols of ``seams`` (``engine``: agents on this machine; the Ray engine lives in
:mod:`agent_supervise.ray`). ``pool``/``poolkeeper`` keep warm workers;
``summary`` builds a run's result from plain values.
"""


def __getattr__(name):
    # `from agent_supervise.fleet import Supervisor` (the README's path) without
    # importing the fleet loop for every module of this package.
    if name in ("Supervisor", "FleetResult"):
        from agent_supervise.fleet import supervisor

        return getattr(supervisor, name)
    raise AttributeError(name)
