"""What a provider and a consumer do, as functions the CLI and the web app share."""
