"""Tests of the state database, each run against SQLite and a real PostgreSQL server."""
