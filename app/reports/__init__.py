"""Blueprint: submitting report requests and reading finished reports."""
