"""The HTTP layer, and the only code that imports FastAPI or Starlette: the app factory, handlers,
middleware, dependencies, routers, the console and the page templates."""
