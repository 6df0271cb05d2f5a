"""Generated protobuf messages and gRPC stubs for the LLMTrace API, version 1."""
