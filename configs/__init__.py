"""Configs: each file's get_config() returns an ml_collections.ConfigDict; common.py holds what
several share (data paths, teachers, the rows of the paper's tables and its numbers)."""
