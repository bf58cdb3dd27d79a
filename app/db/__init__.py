"""SQL state: ORM models, engine/session helpers, migrations entry point and repository functions."""
