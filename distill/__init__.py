"""Distill: train a generative audio model on your own small sound collection."""
__version__ = "0.1.0"
