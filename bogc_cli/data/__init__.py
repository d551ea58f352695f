"""Datasets over prepared caches, batching and modality masking."""
