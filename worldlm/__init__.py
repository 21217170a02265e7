"""WorldLM: worldwide federated training of language models through federations of federations."""

__version__ = "0.1.0"
