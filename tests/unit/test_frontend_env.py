"""gunicorn's environment: two malloc arenas unless the operator chose."""
from mxserve.instance.launcher import frontend_env


def test_frontends_get_two_malloc_arenas_unless_set():
    assert frontend_env({"PATH": "/bin"}) == {"PATH": "/bin", "MALLOC_ARENA_MAX": "2"}
    assert frontend_env({"MALLOC_ARENA_MAX": "8"})["MALLOC_ARENA_MAX"] == "8"
