"""What every server and runner needs, written once.

- :mod:`~forge_slo.runtime.auth`: the bearer-token check and the validation of a token given on a flag.
- :mod:`~forge_slo.runtime.net`: loopback detection, the bind policy and the address a server reports.
- :mod:`~forge_slo.runtime.serving`: read and shutdown timeouts, JSON bodies, waiting for SIGINT/SIGTERM.

Importing this package is light: the standard library only.
"""
