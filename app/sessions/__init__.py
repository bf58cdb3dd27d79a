"""Questionnaire sessions: state pinned to a model version, with the order and time of every observation
(`hhvaem.app.sessions.store`)."""
