"""API Gateway HTTP and WebSocket APIs, Function URLs and ALB targets in front of Kiln
functions (issue 6)."""
