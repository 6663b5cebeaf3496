"""The HTTP server of a hub: Open Inference Protocol v2 routes over the resident Predictor (``snowhub serve``)."""
