"""What every layer shares and nothing else: the leaf package (it imports no other package of the suite)."""
