"""The provider boundary: the only package that imports a provider SDK."""
