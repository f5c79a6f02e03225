"""What a route needs from the app, typed once (instead of casting ``app.state`` in each route).

Routes reach models only through the service: there is no registry here.
"""

from __future__ import annotations

from fastapi import Request

from server.metrics import Metrics
from server.service import ClassificationService
from server.settings import Settings


def service_of(request: Request) -> ClassificationService:
    service: ClassificationService = request.app.state.service
    return service


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def metrics_of(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics
