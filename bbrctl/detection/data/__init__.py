"""Detection data: COCO-format datasets and batches (datasets.py), the synthetic "shapes"
generator and cache (synth.py), training batches grouped by aspect ratio (sampling.py)."""
