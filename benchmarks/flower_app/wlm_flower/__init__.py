"""WorldLM's client work under Flower's FedAvg (benchmarks/flower.py runs it)."""
