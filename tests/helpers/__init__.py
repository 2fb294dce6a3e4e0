"""Helper functions shared by the tests (imported normally; fixtures live in conftest.py files)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository's root
