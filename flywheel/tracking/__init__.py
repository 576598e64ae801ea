"""Lineage and the model registry in MLflow, and the plots logged there."""
