"""Where ciphertext lives: content-addressed blobs behind fsspec."""
