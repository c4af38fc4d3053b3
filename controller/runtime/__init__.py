"""Side effects shared by the operator and the agent: audit log, logging, API access."""
