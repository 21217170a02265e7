"""The wire contract of WorldLM: message types, codec, chunked deltas, topic and key names.

No I/O here, and no torch at import time: brokers and participants build on it.
"""
