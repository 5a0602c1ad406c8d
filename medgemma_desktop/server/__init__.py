"""The OpenAI-compatible local server (`medgemma-desktop serve`): a front end over the session layer."""
