"""Layer 8: phantoms, annotated scans, training, evaluation and ONNX export (uses torch)."""
