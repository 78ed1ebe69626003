"""A site's private data and the server's public pool, as tensors in memory at the input
specification."""
