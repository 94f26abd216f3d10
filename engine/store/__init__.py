"""Postdesk engine.store package."""
