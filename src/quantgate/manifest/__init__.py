"""Release manifests: the schema checks and the claims compared with the artifacts."""
