"""Work made of many runs, above training and evaluation: ``compare`` (several models under one budget)."""
