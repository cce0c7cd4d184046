"""fedseg simulations package."""
