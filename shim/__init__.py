"""The LLMTrace shim: a transparent HTTP proxy for LLM APIs that records every exchange as a span.

`create_app(settings)` builds the Sanic application; `run_shim` serves it. The shim is stateless:
everything it learns goes to the core over gRPC (`shim.shipper`).
"""
