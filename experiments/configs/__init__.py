"""ml_collections presets: `base.py` holds every key with its default; each preset file derives from it."""
