"""Privacy: what MES keeps (capture) and what it blanks out (redact)."""
