"""An example pool worker: one JSON task per line in, one JSON result per line out."""

import json
import sys

for line in sys.stdin:  # the supervisor closes stdin to retire us
    task = json.loads(line)  # {"task": "counter-3", "vars": {...}, "attempt": 1}
    text = task["vars"].get("text", "")
    result = {"words": len(text.split()), "chars": len(text)}
    print(json.dumps({"task": task["task"], "ok": True, "result": result}), flush=True)
