"""fedseg privacy package."""
