"""Step Functions: the Amazon States Language engine and its json-1.0 API."""
