"""The human-feedback domain: the image pool, annotation tasks, export readers and checks,
Bradley–Terry aggregation and decisions, simulated annotators."""
