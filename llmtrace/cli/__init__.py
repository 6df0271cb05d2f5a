"""The `llmtrace` command line."""
