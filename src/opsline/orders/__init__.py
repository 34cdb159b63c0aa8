"""Orders: checkout that never oversells (see README.md)."""
