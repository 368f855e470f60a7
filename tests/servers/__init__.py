"""Real servers the tests start on loopback: SeaweedFS (an S3 API) and, elsewhere, PostgreSQL."""
