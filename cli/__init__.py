"""Command line: thin Click commands over xfw.common; no framework is imported here."""
