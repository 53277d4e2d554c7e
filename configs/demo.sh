#!/bin/sh
# The `make run` demo: one agent that finishes, one memory hog stopped at its cap.
# Each line after an agent shows the outcome agent-supervise reports.
set -u
AS="${AGENT_SUPERVISE:-agent-supervise}"
here=$(dirname "$0")

echo "== $AS doctor"
$AS doctor | sed -n '1,7p'
echo
echo "== a well-behaved agent under a 50M cap"
$AS run --memory 50M -- python3 "$here/examples/researcher.py" cgroups
echo "-> exit status $?"
echo
echo "== a runaway agent under a 50M cap"
$AS run --memory 50M -- python3 "$here/examples/hog.py"
echo "-> exit status $? (137: stopped at its memory cap)"
