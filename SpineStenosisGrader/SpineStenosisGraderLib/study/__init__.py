"""Layers 1-2: read a study, reorient it to an axial stack, normalise it."""
