"""``mqroute bench``: load generation and measurement against a running broker."""
