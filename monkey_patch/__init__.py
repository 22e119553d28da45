"""Capture of internals from Hugging Face causal LMs: named points per layer, across families and releases."""
from monkey_patch.capture import POINTS, Capture, CaptureError, ModelView

__all__ = ["POINTS", "Capture", "CaptureError", "ModelView"]
