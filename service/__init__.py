"""Facial-expression recognition inference service (FastAPI). Start it with ``python -m service``."""
