"""Typed API of gpu.ds01.io/v1alpha1: the single source of the CRDs."""
