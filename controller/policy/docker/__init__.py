"""What the Docker gateway lets a user ask of the engine. Pure.

The gateway judges exactly what dockerd will execute: a request is parsed the
way dockerd's Go stack parses it (`target` for the request line and query,
`gojson` with the struct shapes of `schemas` for JSON bodies), refused when
that reading is ambiguous, vetted on the canonical reading (`create`,
`objects`), and only the gateway's own re-serialisation is sent on.
"""
