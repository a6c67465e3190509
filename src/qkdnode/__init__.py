"""qkdnode package."""
