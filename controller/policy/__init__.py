"""Pure decisions shared by the operator and the agent: no I/O, no clocks read.

Everything here takes its inputs as arguments (including "now") and returns
a decision, so it can be tested exhaustively with plain and property tests.
"""
