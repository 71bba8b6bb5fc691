"""The MCP server: distpar as tools that agents call (a client of the run and the journal, like the CLI)."""
