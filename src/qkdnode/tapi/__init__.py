"""tapi package."""
