"""Plain `nn.Module`s: they know nothing of Lightning, configs or files."""
