"""HyperMLP and HyperGLU sequence mixers."""
