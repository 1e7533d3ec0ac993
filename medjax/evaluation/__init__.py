"""medjax.evaluation"""
