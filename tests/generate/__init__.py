"""Tests of grulm.generate, one file per module."""
