"""The public HTTP API: views, their serializers and OpenAPI declarations, cursor
pagination and Idempotency-Key handling. It calls the domain's services and
selectors; nothing below it imports from here."""
