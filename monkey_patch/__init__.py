"""Capture of internals from Hugging Face causal LMs: named points per layer, across families and releases; and the
one attention function through which attention edits and captures compose."""
from monkey_patch.capture import POINTS, Capture, CaptureError, ModelView
from monkey_patch.routing import AttentionEdit, route

__all__ = ["POINTS", "AttentionEdit", "Capture", "CaptureError", "ModelView", "route"]
