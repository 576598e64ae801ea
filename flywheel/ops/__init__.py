"""Operating the flywheel: the local stack and the servers it starts."""
