"""``--engine ray``: agents on the nodes of a Ray cluster, each caged by the same
launch sequence on its node (``node``), driven from the head (``engine``,
``cluster``), with logs and checkpoints shipped back (``files``, ``control``).
Needs the ``ray`` extra.
"""
