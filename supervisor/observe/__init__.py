"""Reads runs, never drives them: snapshots, the printer and live dashboard, reports,
JUnit, the RunView of a finished run's folder, and the observers that feed them.
"""
