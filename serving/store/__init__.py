"""The model store: layout, versions, deployment record and history, artifact description."""
