"""cnnpipe: a reproducible image-classification pipeline."""
