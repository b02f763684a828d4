"""The notary service: relays records between the GC chain and the carbon chain (section 26)."""
