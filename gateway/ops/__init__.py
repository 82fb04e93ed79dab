"""Operating the gateway: liveness and readiness (``health``), Prometheus metrics read
at scrape time (``metrics``), node timestamp checks (``timecheck``) and the systemd
unit (``service``, ``aiot-gateway.service``)."""

from .health import readiness
from .metrics import GatewayCollector, LatencyHistogram, MetricsUnavailable
from .timecheck import TimeCheck

__all__ = ["GatewayCollector", "LatencyHistogram", "MetricsUnavailable", "TimeCheck",
           "readiness"]
