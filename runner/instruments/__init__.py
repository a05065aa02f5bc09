"""Measurements beyond the loss: gradient noise, parameter trajectories, statistics over seeds."""
