"""The durable job-and-event engine (see README.md in this folder)."""
