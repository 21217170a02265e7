"""The record of a live run: recording its topics, replaying them through the core, auditing
them."""
