"""Layer 7's MRML side: results to nodes, corrections back, background runs."""
