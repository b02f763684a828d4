"""The web dashboard (docs/PROTOCOL.md section 24): static pages a fog node and a chain node
serve under /ui/ on their HTTP port (serve), whose scripts (src/, bundled at set-up by
build) read the services' JSON APIs in the browser with the user's token."""
