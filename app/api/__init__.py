"""HTTP layer: routes, and errors as RFC 9457 problem details (`app.api.problems`)."""
