"""The fog node: verifies signed meter messages and keeps them in an RFC 9162 Merkle log."""
