# SPDX-License-Identifier: MIT
"""`ctmeter serve`: the collector the meters post to (HTTP, MQTT), storage, queries, live page.

    from ctmeter.serve import Collector, ServeConfig
    with Collector(ServeConfig(admin_token="...", device_tokens={"m1": "..."},
                               db="sqlite:///ctmeter.db", http="127.0.0.1:0")) as col:
        print(col.dashboard_url)

Modules: config (settings), validate (readings), storage (SQLite/PostgreSQL), queries (usage,
summaries), alerts (status + alerts), httpd (HTTP/1.1 on asyncio), app (routes), mqtt (ingest),
services (throwaway mosquitto/PostgreSQL for tests and benchmarks).
"""

from ctmeter.serve.app import Collector
from ctmeter.serve.config import ServeConfig, load_config
from ctmeter.serve.storage import open_storage

__all__ = ["Collector", "ServeConfig", "load_config", "open_storage"]
