"""forge-slo's locustfile: ``locust -f <this file> --headless -H URL --model M --rate 5 --duration 60s --out DIR``.

Print its path with ``python -m forge_slo.load locustfile``. Your own locustfile can do the same import (and
subclass ``OpenAIUser``); importing ``forge_slo.load.user`` adds the flags and the listeners.
"""

from forge_slo.load.user import ForgeLoadShape, OpenAIUser

__all__ = ["ForgeLoadShape", "OpenAIUser"]
