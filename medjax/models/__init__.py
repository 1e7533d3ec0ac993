"""medjax.models"""
