"""medjax.interactive"""
