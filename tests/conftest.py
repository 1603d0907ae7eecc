"""Shared by every tier: its folder (tests/) is on sys.path, so helpers such as
``swe_fixture`` import by name."""
