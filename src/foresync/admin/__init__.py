"""The admin HTTP endpoint: status JSON and Prometheus metrics."""
