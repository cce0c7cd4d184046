"""fedseg clients package."""
