"""Stateless reactors: planner, tool router, tools, evaluator, approvals, supervisor."""
