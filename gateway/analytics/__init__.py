"""Analytics on the gateway's stored data: rollups (``rollups.py``), alerts (``alerts.py``,
rules in ``rules.py``) and drift monitoring against the model cards' training
distributions (``drift.py``); ``engine.py`` joins them to the registry's Send events and
the store. Nothing is imported here: the config parser imports ``rules`` alone."""
