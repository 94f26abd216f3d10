"""The web console: a Flask + htmx WSGI app over ``engine`` (never ``gateway``).

``create_app(settings)`` builds it: one blueprint per area (``auth``, ``agent``; the message
view is ``console/message.py``'s ``bp``, registered when present). ``postdesk serve`` runs it
with waitress on ``gateway.http_listen`` beside the gateway, which passes a ``health``
callable for ``/healthz``; ``postdesk console`` runs it alone. Views get the acting user with
``console.authz.viewer()`` and messages with ``engine.queues.message_for`` (404 when hidden).
"""
