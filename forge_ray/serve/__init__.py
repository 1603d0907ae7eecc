"""Serving a trained policy: Ray Serve, an OpenAI-compatible API (``forge-ray serve``)."""
