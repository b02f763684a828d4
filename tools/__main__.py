import sys

print("use one of: python -m tools.reading | tools.stubcheck", file=sys.stderr)
sys.exit(2)
