"""The ingest edge: validating spans as they arrive and turning them into Arrow rows."""
