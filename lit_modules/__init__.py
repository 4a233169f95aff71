"""LightningModules of the suite (one file per model) and the plain networks they compose (`nets/`)."""
