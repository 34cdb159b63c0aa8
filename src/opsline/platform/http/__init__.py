"""HTTP conventions shared by every router: problems, principals, pagination."""
