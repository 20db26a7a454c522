"""The build's state: the SQLite store (a package of its parts) and the build lock."""
