"""Where runners read data from: load-test record files and the Prometheus HTTP API."""
