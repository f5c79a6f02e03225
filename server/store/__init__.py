"""The result store: jobs, their images and results, and the results of synchronous requests,
in SQLite (one server) or PostgreSQL (several replicas behind one load balancer)."""
