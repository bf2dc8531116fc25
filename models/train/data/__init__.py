"""Data for the offline module: the synthetic world and readers of real ImageFolder data."""
