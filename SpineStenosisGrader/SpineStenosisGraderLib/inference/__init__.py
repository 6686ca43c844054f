"""Layers 3-5: detect the canal, group disc levels, name them and grade them."""
