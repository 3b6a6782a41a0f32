"""Tiny local models (random weights, offline tokenizer) for laptops and tests."""

from serve_app.tiny_models.build import build_tiny_model, ensure_tiny_model

__all__ = ["build_tiny_model", "ensure_tiny_model"]
