"""Capture and edit of internals from Hugging Face causal LMs: named points per layer, across families and releases;
and the one attention function through which attention edits and captures compose."""
from monkey_patch.capture import POINTS, Capture, CaptureError, ModelView, paused
from monkey_patch.edit import Edit, edit_attention
from monkey_patch.routing import AttentionEdit, route

__all__ = ["POINTS", "AttentionEdit", "Capture", "CaptureError", "Edit", "ModelView", "edit_attention", "paused",
           "route"]
