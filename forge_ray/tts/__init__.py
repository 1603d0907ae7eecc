"""Test-time scaling: the selectors (``selectors.py``) and ``forge-ray tts`` (``run.py``)."""
