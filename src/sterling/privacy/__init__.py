"""The privacy engine: job model, verifier, accountant, DP-SGD."""
