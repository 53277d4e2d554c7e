"""A pool worker for tests. Per task (JSON vars):
grow: MiB to add and keep (memory that outlives the task, as leaks do);
hog_on_first: "1" to allocate without end on the task's first attempt;
fail: "1" to answer ok: false; garbage: "1" to answer something that is not JSON."""
import json
import sys
import time

kept = []
for line in sys.stdin:
    task = json.loads(line)
    v = task["vars"]
    for _ in range(int(v.get("grow", "0"))):
        block = bytearray(2**20)
        block[::4096] = b"x" * len(block[::4096])
        kept.append(block)
    while v.get("hog_on_first") == "1" and task["attempt"] == 1:
        kept.append(bytearray(2**20))
        kept[-1][::4096] = b"x" * len(kept[-1][::4096])
        time.sleep(0.002)
    time.sleep(float(v.get("sleep", "0.05")))
    if v.get("garbage") == "1":
        print("this is not json", flush=True)
        continue
    answer = {"task": task["task"], "ok": v.get("fail") != "1", "result": {"served_by": None}}
    if not answer["ok"]:
        answer["error"] = "asked to fail"
    print(json.dumps(answer), flush=True)
