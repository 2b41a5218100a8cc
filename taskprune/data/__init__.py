"""Task data (schema, built-in tasks, task sources), general text, token blocks."""
