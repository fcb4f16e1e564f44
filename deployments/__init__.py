"""Ray Serve apps: each a thin class over one library object, bound by `build_app(args)`."""
