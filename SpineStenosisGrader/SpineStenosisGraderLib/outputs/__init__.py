"""Layer 6's writers: JSON, CSV, markups and the HTML report."""
