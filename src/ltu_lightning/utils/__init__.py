"""Small helpers shared by several packages; import them from their modules."""
