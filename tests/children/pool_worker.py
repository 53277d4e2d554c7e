"""A pool worker for tests. Per task (JSON vars):
grow: MiB to add and keep (memory that outlives the task, as leaks do);
hog_on_first: "1" to allocate without end on the task's first attempt;
fail: "1" to answer ok: false; garbage: "1" to answer something that is not JSON;
overlong: N to answer with a valid JSON line of about N bytes; nested: N to answer
with N nested JSON lists; deaf: "1" to close stdout and sleep instead of answering."""

import json
import os
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
    if v.get("deaf") == "1":
        sys.stdout.flush()
        os.close(1)
        time.sleep(3600)
    if v.get("nested"):
        print("[" * int(v["nested"]) + "]" * int(v["nested"]), flush=True)
        continue
    if v.get("overlong"):
        print(
            json.dumps({"task": task["task"], "ok": True, "result": "x" * int(v["overlong"])}),
            flush=True,
        )
        continue
    if v.get("garbage") == "1":
        print("this is not json", flush=True)
        continue
    answer = {"task": task["task"], "ok": v.get("fail") != "1", "result": {"served_by": None}}
    if not answer["ok"]:
        answer["error"] = "asked to fail"
    print(json.dumps(answer), flush=True)
