"""Training machinery shared by stages: the optimisation loop and metric logging."""
