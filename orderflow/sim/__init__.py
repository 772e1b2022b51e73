"""Storefront traffic: a seeded scenario generator with its expected outcome, a driver that produces it, the demo."""

from orderflow.sim.scenario import Expected, ExpectedOrder, Mix, Scenario, expected_outcome

__all__ = ["Expected", "ExpectedOrder", "Mix", "Scenario", "expected_outcome"]
