"""The web page (/ui): placeholder, being written."""

from fastapi import APIRouter


def ui_router(guard) -> APIRouter:
    return APIRouter()
