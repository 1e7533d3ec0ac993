"""medjax.training"""
