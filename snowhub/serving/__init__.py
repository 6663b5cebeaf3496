"""Serving: every task answered from one source pass per batch and image size (SNOW, section 3.2)."""

from snowhub.serving.predictor import ImagePrediction, Predictor

__all__ = ["ImagePrediction", "Predictor"]
