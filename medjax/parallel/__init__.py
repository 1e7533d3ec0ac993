"""medjax.parallel"""
