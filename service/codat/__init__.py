"""Codat's API as the relay uses it: the client, the models of its answers, and when a failed call is retried."""
