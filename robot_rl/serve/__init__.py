"""`robot-rl lake serve`: a small read-only web page over the lake (``robot_rl.serve.app``)."""

from robot_rl.serve.app import create_app, default_cache_dir, is_local_host

__all__ = ["create_app", "default_cache_dir", "is_local_host"]
