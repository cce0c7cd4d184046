"""fedseg audit package."""
