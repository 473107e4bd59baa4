"""Ability tagging: labels from the tagger role, normalised, merged and mapped to coarse categories."""
