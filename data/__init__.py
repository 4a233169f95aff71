"""LightningDataModules of the suite. They know nothing of models; they read real data in its standard layout
and fall back to an embedded default through the same code path."""
