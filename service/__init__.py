"""deltagate service: FastAPI app, dynamic batcher, inference engines, telemetry."""
