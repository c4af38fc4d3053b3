"""The embedded local default: a real control plane built from the Go module proxy."""
