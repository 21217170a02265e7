"""Adapters to Kafka (aiokafka) and Redis (redis.asyncio), and the embedded servers.

No federated-learning logic lives here: only transport and control state.
"""
