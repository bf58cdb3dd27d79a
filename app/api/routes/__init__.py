"""Thin routers: validate, call the engine through the batcher, record audit events."""
