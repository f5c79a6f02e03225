"""Asynchronous jobs: what the job runner needs besides the result store (the callbacks a job
sends when it ends)."""
