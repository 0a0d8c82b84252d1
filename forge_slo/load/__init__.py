"""Load testing of OpenAI-compatible servers with Locust, judged against SLO specs.

``forge-slo load`` (or ``python -m forge_slo.load``) runs it. The CLI's side, light (no Locust, no gevent):
:mod:`~forge_slo.load.command` (flags), :mod:`~forge_slo.load.options` (flags parsed once into
``LoadOptions``), :mod:`~forge_slo.load.launch` (the check request of :mod:`~forge_slo.load.check`, the
server's metrics read by :mod:`~forge_slo.load.server_view`, the engine started, the verdict printed by
:mod:`~forge_slo.load.console`), :mod:`~forge_slo.load.compare`, :mod:`~forge_slo.load.k8s` and
:mod:`~forge_slo.load.demo`. What is sent: :mod:`~forge_slo.load.datasets`, :mod:`~forge_slo.load.workload` and
:mod:`~forge_slo.load.requests`; which stage runs next: :mod:`~forge_slo.load.search`.
The Locust side, only in the engine and its workers (Locust monkey-patches
the standard library with gevent): :mod:`~forge_slo.load.engine` (the process), :mod:`~forge_slo.load.user`
(a streaming request becomes a record), :mod:`~forge_slo.load.sender` (what each sending process holds),
:mod:`~forge_slo.load.controller` (the stages, on the master), :mod:`~forge_slo.load.listeners` (Locust's
events) and :mod:`~forge_slo.load.ghc` (the HTTP client patch); they talk through the typed
:mod:`~forge_slo.load.messages`. This package imports nothing on its own, so the CLI can add the flags cheaply.
"""
