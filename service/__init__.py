"""deltagate service: FastAPI app, dynamic batcher, inference engines, metrics, logs and middleware."""
