"""Synthetic data: procedural shapes, Blender scenes and render-paste compositing.

Domain code: never imports Prefect."""
