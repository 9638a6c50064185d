"""The enclave: the only place where plaintext data exists."""
