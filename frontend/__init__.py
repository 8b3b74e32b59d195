"""The HTTP side of mxserve: gunicorn workers around a Flask app that talks to the broker."""
