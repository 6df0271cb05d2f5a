"""LLMTrace API packages (generated stubs live in versioned subpackages)."""
