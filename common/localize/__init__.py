"""`xfw localize`: where two runs' curves part."""
