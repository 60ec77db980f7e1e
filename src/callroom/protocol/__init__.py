"""Wire protocols as plain data: parse text/bytes into typed messages and back. No I/O here."""
