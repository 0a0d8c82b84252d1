"""Holds only the locustfile: Locust puts a locustfile's folder on sys.path, so it must have no siblings."""
