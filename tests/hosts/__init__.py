"""Virtual hosts (network namespaces) and mounts: root only, skipped with the reason elsewhere."""
