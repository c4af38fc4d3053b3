"""The kopf operator: gathers objects, asks `controller.policy` what to do, applies it.

Handlers stay thin; the operator arrives with the operator issues (see README).
"""
