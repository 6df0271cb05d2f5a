"""Security analysis of captured exchanges.

`masking.mask_sensitive` replaces PII and secrets in text with typed placeholders, for capture in
`redacted` mode and for finding excerpts. Detectors that raise findings will live here too.
"""
