"""The small SAM 3D geometry model (Mixture-of-Transformers rectified flow).

Domain code: never imports Prefect."""
