"""Model packages: manifest, SHA256, backends, offline import, the installed list."""
