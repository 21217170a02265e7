"""Participants: clients and aggregators, the only place where transport, strategy and
training meet. Each is an asyncio task speaking only through Kafka and Redis."""
