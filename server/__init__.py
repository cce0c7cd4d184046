"""fedseg server package."""
