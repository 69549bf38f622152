"""Docker remote NetworkDriver + IpamDriver front end.

``create_app(controller, routes=(), observer=None)`` builds the Flask app (``app.py``; each
of ``routes`` is ``register(app, controller)``, how the daemon adds the CNI
shim's route without this package knowing CNI); ``serve(app,
socket_path)`` runs it with waitress on a unix socket (``server.py``); the
Docker wire format is translated in ``translate.py`` and nowhere else.

Imported lazily: the CLI and the CNI path never load Flask.
"""


def create_app(controller, routes=(), observer=None):
    from pynet.plugin_api.app import create_app as _create_app

    return _create_app(controller, routes, observer=observer)


def serve(app, socket_path: str, **kw):
    from pynet.plugin_api.server import serve as _serve

    return _serve(app, socket_path, **kw)


__all__ = ["create_app", "serve"]
