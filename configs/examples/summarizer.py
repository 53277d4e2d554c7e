"""A small example agent: reads a few 'documents', prints a summary, exits 0."""

import os
import time

agent = os.environ.get("AGENT_ID", "summarizer")
words = 0
for _doc in range(3):
    text = "agents share one machine " * 20000  # ~0.5 MB of text per document
    words += len(text.split())
    time.sleep(0.1)
print(f"{agent}: summarised 3 documents, {words} words", flush=True)
