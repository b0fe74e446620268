"""Latency measurement, depth-width sweeps, Pareto frontier, tables and plots."""
