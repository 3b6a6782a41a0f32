"""Helpers of the loadtest tests: a streaming server with known latencies, started as a subprocess."""
