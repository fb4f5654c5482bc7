"""Analyses built on the engine and the directions: the layer finder, the sign check of a vector
on held-out data, and SAE feature discovery."""
