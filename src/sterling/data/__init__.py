"""Datasets: the canonical form a provider sells, and importers for common file formats."""
