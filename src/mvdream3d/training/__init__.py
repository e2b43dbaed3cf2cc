"""Joint 2D + 3D training (trainer.py) and its YAML config (config.py)."""
