"""Model architectures and loaders shared by verification, training and physics."""
