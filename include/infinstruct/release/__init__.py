"""Releases: per-partition parts, assembly into a versioned folder, the dataset card and composition."""
