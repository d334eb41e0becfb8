"""Blueprint: the browser pages."""
