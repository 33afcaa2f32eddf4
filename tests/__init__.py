"""Test suite for npc_wrapper (a package so fixtures import as ``tests.envs``)."""
