"""Command-line tools: sign/verify readings, provision, flash, simulate, audit."""
