"""Prefect flows: thin compositions of tasks that read like the pipeline diagram.

Each flow takes the config as its ``config`` parameter (the CLI passes the one it loaded;
a deployment run without it loads the worker's config once, at the flow's start)."""
