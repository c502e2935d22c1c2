"""`./stack bench`: what the stack holds beside a raw fan-out baseline (see __main__.py)."""
