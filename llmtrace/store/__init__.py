"""DuckDB storage: schema migrations, the single writer, and read queries."""
