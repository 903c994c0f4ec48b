"""Helpers that drive a real browser for the demo page tests."""
