"""Test plugins written against cjm-plugin-system 0.0.46's plugin interface."""
