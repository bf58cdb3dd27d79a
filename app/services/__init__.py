"""Service-side machinery between the routes and the engine: loaded models, batching, scoring, audit."""
