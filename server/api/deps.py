"""What a route needs from the app, typed once (instead of casting ``app.state`` in each route)."""

from __future__ import annotations

from fastapi import Request

from server.registry import ModelRegistry
from server.service import ClassificationService
from server.settings import Settings


def service_of(request: Request) -> ClassificationService:
    service: ClassificationService = request.app.state.service
    return service


def registry_of(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
