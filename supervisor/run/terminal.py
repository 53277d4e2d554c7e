"""`run` in a terminal: the agent is the terminal's foreground job, as under a shell.

A supervisor that puts its agent in a session of its own (what fleets do, and `run`
without a terminal) takes the terminal away from it: ``open("/dev/tty")`` fails with
ENXIO, a window resize never reaches it, ^C reaches the supervisor instead. Under a
terminal, `run` does what a shell's job control (and ``timeout --foreground``) does:

* the agent gets a process group of its own *in the supervisor's session*, made the
  terminal's foreground group by the child before exec (see ``_spawn.c``): keys,
  ^C (SIGINT), ^\\ (SIGQUIT) and window resizes (SIGWINCH) go to the agent, not to
  the supervisor, which now sits in the background of the terminal;
* ^Z stops the agent (SIGTSTP goes to its group); the supervisor sees that every
  process of that group is stopped, takes the terminal back and stops itself, so the
  user's shell sees its job stopped and gives the terminal back to the shell. On
  ``fg`` the shell continues the supervisor, which hands the terminal to the agent's
  group again and continues it;
* when the run ends, however it ends (a kill at the cap in the middle of an editor's
  raw mode too), the supervisor takes the terminal back and restores the modes it
  had when the agent started; a line of its own then starts on a clean line.

The supervisor ignores SIGTTOU while it is in the background, so that handing the
terminal over and back (tcsetpgrp) and its own messages are never stopped by it; the
child resets it to the default for the agent. Signals that others send to the
supervisor (kill, a hangup forwarded by the shell) are forwarded as always.
"""

from __future__ import annotations

import os
import signal
import termios

from agent_supervise.proctree import ProcessTable


class Terminal:
    """The controlling terminal of a `run` that is in its foreground."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.modes = termios.tcgetattr(fd)
        self.own_group = os.getpgrp()
        self.agent_group: int | None = None
        self._init: int | None = None
        self._old_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)

    @classmethod
    def attach(cls) -> Terminal | None:
        """The controlling terminal, if this process is in its foreground group."""
        try:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return None  # no controlling terminal (a pipe, cron, a CI runner)
        try:
            if os.tcgetpgrp(fd) == os.getpgrp():
                return cls(fd)
        except OSError:
            pass
        os.close(fd)
        return None

    def started(self, pid: int, init: bool) -> None:
        """The agent's root ``pid`` leads the new foreground group; ``init``: that
        root is the agent's namespace init, which never stops (it blocks signals)."""
        self.agent_group = pid
        self._init = pid if init else None

    def check_stopped(self, table: ProcessTable, members) -> None:
        """If ^Z stopped the agent's whole group, stop as its job until ``fg``."""
        if self.agent_group is None:
            return
        group = []
        for pid in members:
            st = table.stat(pid)
            if st is not None and st.pgrp == self.agent_group and pid != self._init:
                group.append(st.state)
        if not group or any(state not in "Tt" for state in group):
            return
        self._take_back()
        os.kill(os.getpid(), signal.SIGSTOP)  # the shell now has the terminal
        # Continued (``fg``): the agent's turn again.
        self._give(self.agent_group)
        try:
            os.killpg(self.agent_group, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def _give(self, group: int) -> None:
        try:
            os.tcsetpgrp(self.fd, group)
        except OSError:
            pass  # the group is gone already, or the terminal hung up

    def _take_back(self) -> None:
        self._give(self.own_group)

    def restore(self) -> None:
        """The run is over: the terminal back to us, in the modes it had before."""
        self._take_back()
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.modes)
        except termios.error:
            pass
        signal.signal(signal.SIGTTOU, self._old_ttou)
        os.close(self.fd)

    @staticmethod
    def clean_line() -> str:
        """What to print before a line of our own: the agent may have left the cursor
        anywhere (a raw-mode editor killed at its cap)."""
        return "\r\n"
