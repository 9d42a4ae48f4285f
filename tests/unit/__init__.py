"""No framework imported, no worker started: the whole tier runs in seconds (`make test-fast`)."""
