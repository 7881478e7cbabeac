"""Registered mmengine hooks (one per file)."""
