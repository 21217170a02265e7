"""Models, data, local training and evaluation: synchronous, no transport."""
