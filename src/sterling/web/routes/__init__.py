"""The API's routes, one module per page of the app."""
