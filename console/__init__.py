"""The Flask + htmx web console. For now only the health endpoint lives beside it."""
