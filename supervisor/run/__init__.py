"""One caged agent: the launch sequence (cage -> spawn -> attach -> watch) and what
watches it until its whole tree is gone.

``launch`` is the only place an agent is spawned; ``spawn`` (with the C extension
``agent_supervise._spawn``) enters the cage before exec; ``lifecycle`` is a run's
states and its ending; ``watchdog`` and ``escape`` sample the tree and catch what
leaves the cage; ``reaper`` and ``loop`` reap and drive; ``single`` is the
``agent-supervise run`` API (:func:`run_agent`), ``terminal`` its foreground job.
"""
